"""The LitServe API of ``anogan-serve`` (``ScorerAPI``): in each inference worker it decodes a
request's images within their budgets (pixels per image and per request, the answer's size),
scores the batch's images with one ``Detector.predict`` call and answers each request on its own."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogan.data.notes import line
from anogan.deploy.middleware import API_PATH, BadRequest, form_flag
from anogan.deploy.page import pictures
from anogan.utils.errors import ServeError

try:  # the serve extra; without it the command line says what to install
    import litserve as ls
except ImportError:  # pragma: no cover - depends on the installation
    ls = None

if TYPE_CHECKING:
    import numpy as np
    from litserve import LitAPI as _LitAPIBase
else:
    _LitAPIBase = ls.LitAPI if ls is not None else object

MAPS = (False, True, "full")  # no map; the model's resolution; the image's own size (within max_response_bytes)
MIN_BYTES_PER_VALUE = 4  # the fewest bytes a float takes in the JSON answer ("0.0,"): the early size check


def finite_or_none(value: object) -> float | None:
    """``value`` if it is a finite number, else None (JSON has no infinity or NaN)."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


class ScorerAPI(_LitAPIBase):
    """The LitServe API over one scorer file: decode (worker) -> batch -> ``Detector.predict``
    -> one answer per request. A request whose images cannot be decoded, or whose cost is over the
    budget (``max_request_pixels``, ``max_response_bytes``), is answered 4xx on its own; the other
    requests of its batch are scored as usual. ``data``: the scorer file's bytes, read once by the
    main process (``sha256``: their digest), loaded by every worker."""

    def __init__(
        self,
        artifact: str,
        device: str,
        threshold: str | float | None,
        max_batch_size: int,
        batch_timeout: float,
        max_pixels: int,
        data: bytes = b"",
        sha256: str = "",
        max_request_pixels: int = 50_000_000,
        max_response_bytes: int = 10_000_000,
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        self.artifact, self.device_setting, self.threshold, self.max_pixels = artifact, device, threshold, max_pixels
        self.data, self.sha256 = data, sha256
        self.max_request_pixels, self.max_response_bytes = max_request_pixels, max_response_bytes

    def setup(self, device: str) -> None:
        """In the inference worker: the model from the bytes the main process read (their sha256
        checked). The worker ignores SIGTERM/SIGINT: the main process stops it once the requests in
        flight are answered (a process group's signal must not cut them short)."""
        from anogan.deploy.detector import Detector

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if hashlib.sha256(self.data).hexdigest() != self.sha256:
            raise ServeError(f"{self.artifact}: the scorer bytes given to the worker are not those the server read")
        self.detector = Detector(Path(self.artifact), device=self.device_setting, data=self.data)
        self.data = b""  # loaded: the bytes are not needed any more

    def _size(self, blob: bytes) -> tuple[int, int] | None:
        """(width, height) read from the file's header (nothing is decoded); None for a file that
        is not an image (``read_pixels`` says why), (0, 0) for one over Pillow's own limit."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(blob)) as img:
                return img.width, img.height
        except Image.DecompressionBombError:  # over twice Pillow's own limit
            return (self.max_pixels + 1, 1)
        except Exception:
            return None

    # LitServe builds the endpoint from these two signatures: decode_request's ``request`` and
    # encode_response's return must stay unannotated (FastAPI's Request and Response).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        """JSON dict or multipart form -> ``{"pixels": [anogan.deploy.inputs.ReadImage, ...], "maps": False |
        True | "full" | "png"}`` (read by the run's ``data.alpha``, with their reading notes), or
        ``{"error": (status, reason)}``. The cost is checked from the headers before
        anything is decoded: ``max_pixels`` per image, ``max_request_pixels`` in all, and with
        ``maps=full`` the answer's least possible size against ``max_response_bytes``."""
        from anogan.data.reading import read_pixels
        from anogan.deploy.inputs import ReadImage
        from anogan.utils.errors import ImageError

        try:
            if isinstance(request, dict):
                maps = request.get("maps", False)
                blobs: list[tuple[str, bytes]] = []
                for i, text in enumerate(request["images"]):
                    try:
                        blobs.append((f"images[{i}]", base64.b64decode(text, validate=True)))
                    except (binascii.Error, ValueError):
                        raise BadRequest(400, f"images[{i}] is not base64") from None
            else:
                maps = form_flag(request.get("maps", "false"))
                blobs = [(f.filename or f"file[{i}]", f.file.read()) for i, f in enumerate(request.getlist("file"))]
            total = 0
            for name, blob in blobs:
                size = self._size(blob)
                if size is not None and size[0] * size[1] > self.max_pixels:
                    raise BadRequest(413, f"{name}: more than max_pixels={self.max_pixels} pixels")
                total += 0 if size is None else size[0] * size[1]
            if total > self.max_request_pixels:
                raise BadRequest(
                    413,
                    f"the request's images hold {total} pixels, more than max_request_pixels={self.max_request_pixels}: "
                    "send fewer or smaller images per request",
                )
            if maps == "full" and total * MIN_BYTES_PER_VALUE > self.max_response_bytes:
                raise BadRequest(413, self._too_long(f"at least {total * MIN_BYTES_PER_VALUE}"))
            pixels: list[ReadImage] = []
            for name, blob in blobs:
                try:
                    pixels.append(ReadImage(name, *read_pixels(io.BytesIO(blob), self.detector.alpha)))
                except ImageError as err:
                    raise BadRequest(400, f"{name}: {err}") from None
            return {"pixels": pixels, "maps": maps}
        except BadRequest as bad:
            return {"error": (bad.status, bad.reason)}

    def _too_long(self, size: str) -> str:
        return (
            f"the answer would take {size} bytes, more than max_response_bytes={self.max_response_bytes}: "
            "ask maps=true (the model's resolution) or send fewer or smaller images"
        )

    def batch(self, inputs: Any) -> list[Any]:
        return list(inputs)

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def predict(self, requests: Any) -> Any:
        """Every image of the batch's valid requests in one ``Detector.predict`` call (maps at the
        model's resolution; resized to the image for ``maps=full``). An answer longer than
        ``max_response_bytes`` becomes a 413 of its own."""
        single = isinstance(requests, dict)  # max_batch_size=1: LitServe passes one request
        requests = [requests] if single else requests
        valid = [r for r in requests if "error" not in r]
        answers: list[dict[str, Any]] = []
        if valid:
            pixels = [p for r in valid for p in r["pixels"]]
            want_maps = any(r["maps"] for r in valid)
            pngs = any(r["maps"] == "png" for r in valid)
            result = self.detector.predict(
                pixels, threshold=self.threshold, maps="model" if want_maps else False, reconstructions=pngs
            )
            own = [line(row["source"], notes) for row, notes in zip(result.rows, result.notes)]
            shared = [w for w in result.warnings if w not in own]  # the batch's, not one image's
            start = 0
            for r in valid:
                rows, lines = [], [own[k] for k in range(start, start + len(r["pixels"])) if result.notes[k]]
                for k in range(start, start + len(r["pixels"])):
                    row = {key: result.rows[k][key] for key in result.rows[k] if key != "source"}
                    row["p_value"] = finite_or_none(row["p_value"])
                    if r["maps"] == "png":
                        row.update(pictures(result, k))
                    elif r["maps"]:
                        row["map"] = None if result.maps is None else self._map(result.maps[k], pixels[k].pixels, r["maps"])
                    rows.append(row)
                start += len(r["pixels"])
                answer: dict[str, Any] = {
                    "predictions": rows,
                    "threshold": finite_or_none(result.threshold),
                    "rule": result.rule,
                    "warnings": lines + shared,
                }
                if r["maps"]:
                    size = len(json.dumps(answer))
                    if size > self.max_response_bytes:
                        answer = {"error": (413, self._too_long(str(size)))}
                answers.append(answer)
        it = iter(answers)
        out = [r if "error" in r else next(it) for r in requests]
        return out[0] if single else out

    def _map(self, model_map: np.ndarray, pixels: np.ndarray, maps: bool | str) -> list:
        """The map as JSON lists: at the model's resolution, or at the image's own size (``full``)."""
        import torch

        if maps == "full":
            return self.detector.map_at_size(torch.from_numpy(model_map), pixels.shape[:2]).tolist()
        return model_map.tolist()

    def encode_response(self, output: dict[str, Any]):  # type: ignore[no-untyped-def]  # see decode_request
        if "error" in output:
            from fastapi.responses import JSONResponse

            status, reason = output["error"]
            return JSONResponse(status_code=status, content={"detail": reason})
        return output
