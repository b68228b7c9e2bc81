"""Serve a finished run over HTTP with LitServe (``anogan-serve``; ``pip install anogan[serve]``):

    anogan-serve ckpt=<run folder or scorer.pt> [port=8000] [host=127.0.0.1] [device=auto|cpu|cuda]
                 [threshold=fpr|f1|youden|<number>] [max_batch_size=32] [batch_timeout=0.01]
                 [max_images=64] [max_bytes=20000000] [max_pixels=40000000] [workers=1] [timeout=300]

Endpoints:

* ``POST /predict``: one or several images, as multipart form data (one or more fields ``file``;
  optional field ``maps=true``) or as JSON ``{"images": ["<base64 of an image file>", ...],
  "maps": false}``. Answer: ``{"predictions": [{"score", "p_value", "label", "raw_score",
  "residual", "discrimination", "complexity", "steps", "notes"[, "map"]}, ...], "threshold", "rule",
  "warnings"}`` in the order sent; ``map`` is the anomaly map at the image's own size (H lists of
  W floats); ``notes`` what reading the image interpreted (``anogan.data.notes``), and
  ``warnings`` one line per such image (its file name: ``"<name>: <notes>"``) then the others.
  ``threshold`` is ``null`` where it is infinite (then ``warnings`` says so).
* ``GET /health``: ``ok`` (200) once the scorer is loaded; ``GET /info``: the run's settings.

Every image goes through ``anogan.api.Detector.predict`` (the same preprocessing, inference path
and calibration as ``anogan-predict`` and the run itself). Requests that arrive together are
scored together (LitServe's dynamic batching: up to ``max_batch_size`` requests, waiting at most
``batch_timeout`` seconds). A bad request gets a 4xx answer ``{"detail": "<one line>"}`` and the
server goes on: 413 for a body over ``max_bytes``, 415 for another content type, 400 for a
malformed body, a missing or wrong field, more than ``max_images`` images or a file that is not an
image; 413 also for an image of more than ``max_pixels`` pixels (checked from its header, before
decoding). Only the scorer file is read (``weights_only``); nothing else is loaded, and the server
listens on the loopback interface unless ``host`` says otherwise.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogan.cli import parse_key_values
from anogan.data.notes import line
from anogan.errors import ServeError, UserError

try:  # the serve extra; without it the command line says what to install
    import litserve as ls
except ImportError:  # pragma: no cover - depends on the installation
    ls = None

if TYPE_CHECKING:
    from litserve import LitAPI as _LitAPIBase
    from omegaconf import DictConfig
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
else:
    _LitAPIBase = ls.LitAPI if ls is not None else object

log = logging.getLogger("anogan.serve")

USAGE = (
    "usage: anogan-serve ckpt=<run folder or scorer.pt> [port=8000] [host=127.0.0.1] [device=auto|cpu|cuda] "
    "[threshold=fpr|f1|youden|<number>] [max_batch_size=32] [batch_timeout=0.01] [max_images=64] "
    "[max_bytes=20000000] [max_pixels=40000000] [workers=1] [timeout=300]"
)
API_PATH = "/predict"


@dataclass
class ServeConfig:
    """The command line's settings (``USAGE``); ``???``: required."""

    ckpt: str = "???"
    port: int = 8000
    host: str = "127.0.0.1"  # loopback only; 0.0.0.0 listens on every interface
    device: str = "auto"
    threshold: str | None = None  # the run's rule when null
    max_batch_size: int = 32  # requests scored together
    batch_timeout: float = 0.01  # seconds a batch waits to fill
    max_images: int = 64  # images in one request
    max_bytes: int = 20_000_000  # size of one request's body
    max_pixels: int = 40_000_000  # pixels of one image (checked before it is decoded)
    workers: int = 1  # inference processes
    timeout: float = 300.0  # seconds before a request is answered 504 (a long latent search needs time)


class BadRequest(Exception):
    """A request that cannot be scored: ``status`` (4xx) and a one-line ``reason``."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _finite(value: object) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


# ---------------------------------------------------------------------- the request's envelope
def check_json(body: bytes, max_images: int) -> None:
    """A JSON body holds ``{"images": [<base64 string>, ...] (1..max_images)[, "maps": bool]}``;
    ``BadRequest`` (400) otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, 'the body is not valid JSON: send {"images": ["<base64>", ...]}') from None
    if not isinstance(data, dict) or "images" not in data:
        raise BadRequest(400, 'the JSON body has no "images" field: send {"images": ["<base64>", ...]}')
    unknown = sorted(set(data) - {"images", "maps"})
    if unknown:
        raise BadRequest(400, f'unknown field(s) {", ".join(unknown)}: use "images" and optionally "maps"')
    images = data["images"]
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise BadRequest(400, '"images" must be a non-empty list of base64 strings')
    if len(images) > max_images:
        raise BadRequest(400, f"{len(images)} images in one request: at most {max_images} (max_images)")
    if not isinstance(data.get("maps", False), bool):
        raise BadRequest(400, '"maps" must be true or false')


def _form_flag(value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise BadRequest(400, f"maps={value!r}: use true or false")


async def check_form(scope: Scope, body: bytes, max_images: int) -> None:
    """A multipart body holds 1..max_images file fields named ``file`` (and optionally ``maps``);
    ``BadRequest`` (400) otherwise."""
    from starlette.requests import Request

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=max_images + 1, max_fields=16)
    except Exception as err:  # starlette raises several kinds for malformed multipart data
        raise BadRequest(400, f"the multipart body cannot be read ({' '.join(str(err).split()) or type(err).__name__})") from None
    try:
        names = sorted(set(form.keys()) - {"file", "maps"})
        if names:
            raise BadRequest(400, f"unknown form field(s) {', '.join(names)}: send the images as field 'file'")
        files = form.getlist("file")
        if not files:
            raise BadRequest(400, "no form field 'file': send each image as a file field named 'file'")
        if not all(hasattr(f, "filename") and hasattr(f, "read") for f in files):
            raise BadRequest(400, "form field 'file' must hold files, not text")
        if len(files) > max_images:
            raise BadRequest(400, f"{len(files)} images in one request: at most {max_images} (max_images)")
        _form_flag(form.get("maps", "false"))
    finally:
        await form.close()


class RequestGate:
    """ASGI middleware in front of ``POST /predict``: reads the body (at most ``max_bytes``) and
    checks its envelope (content type, JSON or multipart layout, field names, image count) before
    LitServe queues it, answering 4xx with ``{"detail": "<one line>"}`` otherwise. The images
    themselves are decoded by the inference worker (``ScorerAPI.decode_request``)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_images: int, path: str = API_PATH):
        self.app, self.max_bytes, self.max_images, self.path = app, max_bytes, max_images, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read(headers, receive)
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "application/json":
                check_json(body, self.max_images)
            elif kind == "multipart/form-data":
                await check_form(scope, body, self.max_images)
            else:
                raise BadRequest(
                    415,
                    f"content type {kind or 'none'!r}: send multipart/form-data (field 'file') "
                    'or application/json {"images": ["<base64>", ...]}',
                )
        except BadRequest as bad:
            await self._answer(send, bad.status, bad.reason)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, if any
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, headers: dict[str, str], receive: Receive) -> bytes:
        too_large = BadRequest(413, f"the request is larger than {self.max_bytes} bytes (max_bytes)")
        try:
            if int(headers.get("content-length", 0)) > self.max_bytes:
                raise too_large
        except ValueError:
            raise BadRequest(400, "the Content-Length header is not a number") from None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest(400, "the client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _answer(send: Send, status: int, reason: str) -> None:
        body = json.dumps({"detail": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- the scorer behind it
class ScorerAPI(_LitAPIBase):
    """The LitServe API over one scorer file: decode (worker) -> batch -> ``Detector.predict``
    -> one answer per request. A request whose images cannot be decoded is answered 400 on its
    own; the other requests of its batch are scored as usual."""

    def __init__(
        self,
        artifact: str,
        device: str,
        threshold: str | float | None,
        max_batch_size: int,
        batch_timeout: float,
        max_pixels: int,
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        self.artifact, self.device_setting, self.threshold, self.max_pixels = artifact, device, threshold, max_pixels

    def setup(self, device: str) -> None:
        from anogan.api import load

        self.detector = load(self.artifact, device=self.device_setting)

    def _too_large(self, blob: bytes) -> bool:
        """More than ``max_pixels`` pixels, read from the file's header (nothing is decoded)."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(blob)) as img:
                return img.width * img.height > self.max_pixels
        except Image.DecompressionBombError:  # over twice Pillow's own limit
            return True
        except Exception:  # not an image: load_pixels says why
            return False

    # LitServe builds the endpoint from these two signatures: decode_request's ``request`` and
    # encode_response's return must stay unannotated (FastAPI's Request and Response).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        """JSON dict or multipart form -> ``{"pixels": [anogan.api.ReadImage, ...], "maps": bool}``
        (read by the run's ``data.alpha``, with their reading notes), or ``{"error": (status, reason)}``."""
        from anogan.api import ReadImage
        from anogan.data.images import read_pixels
        from anogan.errors import ImageError

        try:
            if isinstance(request, dict):
                maps = bool(request.get("maps", False))
                blobs: list[tuple[str, bytes]] = []
                for i, text in enumerate(request["images"]):
                    try:
                        blobs.append((f"images[{i}]", base64.b64decode(text, validate=True)))
                    except (binascii.Error, ValueError):
                        raise BadRequest(400, f"images[{i}] is not base64") from None
            else:
                maps = _form_flag(request.get("maps", "false"))
                blobs = [(f.filename or f"file[{i}]", f.file.read()) for i, f in enumerate(request.getlist("file"))]
            pixels: list[ReadImage] = []
            for name, blob in blobs:
                if self._too_large(blob):
                    raise BadRequest(413, f"{name}: more than max_pixels={self.max_pixels} pixels")
                try:
                    pixels.append(ReadImage(name, *read_pixels(io.BytesIO(blob), self.detector.alpha)))
                except ImageError as err:
                    raise BadRequest(400, f"{name}: {err}") from None
            return {"pixels": pixels, "maps": maps}
        except BadRequest as bad:
            return {"error": (bad.status, bad.reason)}

    def batch(self, inputs: Any) -> list[Any]:
        return list(inputs)

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def predict(self, requests: Any) -> Any:
        """Every image of the batch's valid requests in one ``Detector.predict`` call."""
        single = isinstance(requests, dict)  # max_batch_size=1: LitServe passes one request
        requests = [requests] if single else requests
        valid = [r for r in requests if "error" not in r]
        answers = []
        if valid:
            pixels = [p for r in valid for p in r["pixels"]]
            result = self.detector.predict(pixels, threshold=self.threshold, maps=any(r["maps"] for r in valid))
            own = [line(row["source"], notes) for row, notes in zip(result.rows, result.notes)]
            shared = [w for w in result.warnings if w not in own]  # the batch's, not one image's
            start = 0
            for r in valid:
                rows, lines = [], [own[k] for k in range(start, start + len(r["pixels"])) if result.notes[k]]
                for k in range(start, start + len(r["pixels"])):
                    row = {key: result.rows[k][key] for key in result.rows[k] if key != "source"}
                    row["p_value"] = _finite(row["p_value"])
                    if r["maps"]:
                        row["map"] = result.maps[k].tolist() if result.maps is not None else None
                    rows.append(row)
                start += len(r["pixels"])
                answers.append(
                    {
                        "predictions": rows,
                        "threshold": _finite(result.threshold),
                        "rule": result.rule,
                        "warnings": lines + shared,
                    }
                )
        it = iter(answers)
        out = [r if "error" in r else next(it) for r in requests]
        return out[0] if single else out

    def encode_response(self, output: dict[str, Any]):  # type: ignore[no-untyped-def]  # see decode_request
        if "error" in output:
            from fastapi.responses import JSONResponse

            status, reason = output["error"]
            return JSONResponse(status_code=status, content={"detail": reason})
        return output


def build_server(cfg: DictConfig) -> Any:
    """The ``litserve.LitServer`` for ``cfg`` (a structured ``ServeConfig``), not yet running."""
    import torch

    from anogan.api import Detector, _check_rule, load, trainer_settings
    from anogan.artifact import resolve_path

    artifact = resolve_path(cfg.ckpt)
    threshold = _parse_threshold(cfg.threshold)
    _check_rule(threshold)
    trainer_settings(cfg.device, "32-true")  # device=cuda without a GPU: one line now, not in the worker
    detector: Detector = load(artifact, device="cpu")  # read once here for /info; the workers load their own
    for key in ("max_batch_size", "max_images", "max_bytes", "max_pixels", "workers", "port"):
        if cfg[key] < 1:
            raise ServeError(f"{key}={cfg[key]}: use a whole number >= 1")
    if cfg.batch_timeout < 0 or cfg.timeout <= cfg.batch_timeout:
        raise ServeError(f"batch_timeout={cfg.batch_timeout}, timeout={cfg.timeout}: use 0 <= batch_timeout < timeout")
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    metadata = {
        "scorer_file": str(artifact),
        "scorer": type(detector.scorer).__name__,
        "image_size": detector.image_size,
        "channels": detector.channels,
        "resize": detector.resize,
        "rule": detector.rule if threshold is None else threshold,
        "thresholds": {k: _finite(v) if isinstance(v, (int, float)) else v for k, v in detector.thresholds.items()},
        "provenance": {k: str(v) for k, v in detector.provenance.items()},
    }
    api = ScorerAPI(str(artifact), cfg.device, threshold, cfg.max_batch_size, cfg.batch_timeout, cfg.max_pixels)
    return ls.LitServer(
        api,
        accelerator="cuda" if on_gpu else "cpu",
        devices=1,
        workers_per_device=cfg.workers,
        timeout=cfg.timeout,
        model_metadata=metadata,
        middlewares=[(RequestGate, {"max_bytes": cfg.max_bytes, "max_images": cfg.max_images})],
    )


def _parse_threshold(value: str | float | None) -> str | float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return str(value).strip().lower()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        cfg = parse_key_values(sys.argv[1:] if argv is None else argv, ServeConfig, USAGE, ServeError)
        if ls is None:
            raise ServeError("anogan-serve needs LitServe: pip install 'anogan[serve]'")
        server = build_server(cfg)
    except UserError as err:
        log.error("%s", err)
        return 2
    log.info("serving %s on http://%s:%d%s (health: /health)", Path(cfg.ckpt), cfg.host, cfg.port, API_PATH)
    server.run(host=cfg.host, port=cfg.port, generate_client_file=False, num_api_servers=1, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
