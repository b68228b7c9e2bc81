"""Serve a finished run over HTTP with LitServe (``anogan-serve``; ``pip install anogan[serve]``):

    anogan-serve ckpt=<run folder or scorer.pt> [port=8000] [host=127.0.0.1] [device=auto|cpu|cuda]
                 [threshold=fpr|f1|youden|<number>] [max_batch_size=32] [batch_timeout=0.01]
                 [max_images=64] [max_bytes=20000000] [max_pixels=40000000] [max_request_pixels=50000000]
                 [max_response_bytes=10000000] [body_timeout=30] [drain_timeout=20] [workers=1] [timeout=300]

Endpoints:

* ``POST /predict``: one or several images, as multipart form data (one or more fields ``file``;
  optional field ``maps=true|full``) or as JSON ``{"images": ["<base64 of an image file>", ...],
  "maps": false|true|"full"}``. Answer: ``{"predictions": [{"score", "p_value", "label", "raw_score",
  "residual", "discrimination", "complexity", "steps", "notes"[, "map"]}, ...], "threshold", "rule",
  "warnings"}`` in the order sent; ``map`` is the anomaly map at the model's resolution (S lists of
  S floats) with ``maps=true``, at the image's own size (H lists of W floats) with ``maps=full``;
  ``notes`` what reading the image interpreted (``anogan.data.notes``), and ``warnings`` one line
  per such image (its file name: ``"<name>: <notes>"``) then the others.
  ``threshold`` is ``null`` where it is infinite (then ``warnings`` says so).
* ``GET /``: the page for people (``anogan.deploy.page``); ``maps=png`` (the page's option): pictures
  instead of the map's floats (``page.pictures``); ``/info`` carries the run's facts (``page.run_facts``).
* ``GET /health``: ``ok`` (200) once the scorer is loaded; ``ok; warning: ...`` when the scorer
  file on disk is no longer the one served. ``GET /info``: the run's settings, the served file's
  ``sha256`` and ``loaded_at``.

One model: the scorer file is read once, by the main process; its bytes (checked, with their
sha256) go to every inference worker, so ``/info`` describes exactly the model that scores.

Bounded cost per request: at most ``max_request_pixels`` decoded pixels over its images (read from
the headers, before decoding) and an answer of at most ``max_response_bytes`` (413 otherwise); the
body must arrive within ``body_timeout`` seconds (408 otherwise).

Shutdown: SIGTERM or SIGINT, to the main process or its whole process group (``docker stop``,
systemd), stops accepting connections, lets the requests in flight finish for up to
``drain_timeout`` seconds, answers those still unfinished with 503 ``{"detail": ...}``, stops every
child process (the port is free), logs one line and exits 0.

Every image goes through ``anogan.deploy.api.Detector.predict`` (the same preprocessing, inference path
and calibration as ``anogan-predict`` and the run itself). Requests that arrive together are
scored together (LitServe's dynamic batching: up to ``max_batch_size`` requests, waiting at most
``batch_timeout`` seconds). A bad request gets a 4xx answer ``{"detail": "<one line>"}`` and the
server goes on: 413 for a body over ``max_bytes``, 415 for another content type, 400 for a
malformed body, a missing or wrong field, more than ``max_images`` images or a file that is not an
image; 413 also for an image of more than ``max_pixels`` pixels (checked from its header, before
decoding), for more than ``max_request_pixels`` in one request and for an answer over
``max_response_bytes``; 408 for a body not received within ``body_timeout`` seconds. Only the scorer file is read (``weights_only``); nothing else is loaded, and the server
listens on the loopback interface unless ``host`` says otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import math
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anogan.config.arguments import ServeConfig, parse_key_values
from anogan.data.notes import line
from anogan.deploy.page import add_page, pictures, run_facts
from anogan.utils.errors import ServeError, UserError

try:  # the serve extra; without it the command line says what to install
    import litserve as ls
except ImportError:  # pragma: no cover - depends on the installation
    ls = None

if TYPE_CHECKING:
    import numpy as np
    from litserve import LitAPI as _LitAPIBase
    from omegaconf import DictConfig
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
else:
    _LitAPIBase = ls.LitAPI if ls is not None else object

log = logging.getLogger("anogan.deploy.serve")

USAGE = (
    "usage: anogan-serve ckpt=<run folder or scorer.pt> [port=8000] [host=127.0.0.1] [device=auto|cpu|cuda] "
    "[threshold=fpr|f1|youden|<number>] [max_batch_size=32] [batch_timeout=0.01] [max_images=64] "
    "[max_bytes=20000000] [max_pixels=40000000] [max_request_pixels=50000000] [max_response_bytes=10000000] "
    "[body_timeout=30] [drain_timeout=20] [workers=1] [timeout=300]"
)
MAPS = (False, True, "full")  # no map; the model's resolution; the image's own size (within max_response_bytes)
MIN_BYTES_PER_VALUE = 4  # the fewest bytes a float takes in the JSON answer ("0.0,"): the early size check
API_PATH = "/predict"


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
    maps = data.get("maps", False)
    if not (isinstance(maps, bool) or maps in ("full", "png")):
        raise BadRequest(
            400, '"maps" must be true (the model\'s resolution), false, "full" (the image\'s own size) or "png" (pictures)'
        )


def _form_flag(value: object) -> bool | str:
    """A form's ``maps`` value: ``False``, ``True`` (the model's resolution), ``"full"`` or ``"png"``
    (the page's pictures: ``anogan.deploy.page.pictures``)."""
    text = str(value).strip().lower()
    if text == "png":
        return "png"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    if text == "full":
        return "full"
    raise BadRequest(400, f"maps={value!r}: use true (the model's resolution), false, full (the image's own size) or png")


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
    """ASGI middleware in front of ``POST /predict``: reads the body (at most ``max_bytes``, within
    ``body_timeout`` seconds: 408 after) and checks its envelope (content type, JSON or multipart
    layout, field names, image count) before LitServe queues it, answering 4xx with
    ``{"detail": "<one line>"}`` otherwise. The images themselves are decoded by the inference
    worker (``ScorerAPI.decode_request``). A request still unanswered when the server's drain time
    is over (uvicorn then cancels it) is answered 503 ``{"detail": ...}``."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_images: int, body_timeout: float = 30.0, path: str = API_PATH):
        self.app, self.max_bytes, self.max_images, self.path = app, max_bytes, max_images, path
        self.body_timeout = body_timeout

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
        sent = started = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, if any
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, send_and_note)
        except asyncio.CancelledError:  # the drain time is over: uvicorn cancels what is still running
            if not started:
                await self._answer(send, 503, "the server is shutting down: send the request again later")

    async def _read(self, headers: dict[str, str], receive: Receive) -> bytes:
        too_large = BadRequest(413, f"the request is larger than {self.max_bytes} bytes (max_bytes)")
        try:
            if int(headers.get("content-length", 0)) > self.max_bytes:
                raise too_large
        except ValueError:
            raise BadRequest(400, "the Content-Length header is not a number") from None
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                raise BadRequest(
                    408, f"the body was not received within {self.body_timeout:g} s (body_timeout): send it faster"
                ) from None
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
        """The one-line answer; the connection is closed after it (the body may be partly unread)."""
        body = json.dumps({"detail": reason}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ScorerFileWatch:
    """ASGI middleware on ``GET /health``: when the scorer file on disk is no longer the one served
    (another sha256, or removed), the healthy answer becomes ``ok; warning: <one line>`` (still 200:
    the served model is intact) and the warning is logged once. The file is hashed again only when
    its size, modification time or inode changed."""

    def __init__(self, app: ASGIApp, path: str, sha256: str, stat_key: tuple[int, int, int]):
        self.app, self.path, self.sha256 = app, Path(path), sha256
        self.known = {stat_key: sha256}  # (size, mtime_ns, inode) -> sha256 on disk
        self.logged = False

    def warning(self) -> str | None:
        """One line when the file on disk differs from the served one, else None."""
        try:
            st = self.path.stat()
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            if key not in self.known:
                self.known = {key: hashlib.sha256(self.path.read_bytes()).hexdigest()}
            on_disk = self.known[key]
        except OSError:
            on_disk = None
        if on_disk == self.sha256:
            return None
        now = "was removed" if on_disk is None else f"changed on disk (sha256 {on_disk[:12]}...)"
        return (
            f"{self.path} {now} since it was loaded; this server still scores with sha256 {self.sha256[:12]}... "
            "(see /info): restart anogan-serve to serve the file on disk"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/health" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        warning = self.warning()
        if warning is None:
            await self.app(scope, receive, send)
            return
        if not self.logged:
            log.warning("%s", warning)
            self.logged = True
        status = 200

        async def rewrite(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 200:
                    return  # sent with the new body below
            elif message["type"] == "http.response.body" and status == 200:
                body = f"ok; warning: {warning}".encode()
                headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        await self.app(scope, receive, rewrite)


# ---------------------------------------------------------------------- the scorer behind it
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
        from anogan.deploy.api import Detector

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
        """JSON dict or multipart form -> ``{"pixels": [anogan.deploy.api.ReadImage, ...], "maps": False |
        True | "full" | "png"}`` (read by the run's ``data.alpha``, with their reading notes), or
        ``{"error": (status, reason)}``. The cost is checked from the headers before
        anything is decoded: ``max_pixels`` per image, ``max_request_pixels`` in all, and with
        ``maps=full`` the answer's least possible size against ``max_response_bytes``."""
        from anogan.data.images import read_pixels
        from anogan.deploy.api import ReadImage
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
                maps = _form_flag(request.get("maps", "false"))
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
                    row["p_value"] = _finite(row["p_value"])
                    if r["maps"] == "png":
                        row.update(pictures(result, k))
                    elif r["maps"]:
                        row["map"] = None if result.maps is None else self._map(result.maps[k], pixels[k].pixels, r["maps"])
                    rows.append(row)
                start += len(r["pixels"])
                answer: dict[str, Any] = {
                    "predictions": rows,
                    "threshold": _finite(result.threshold),
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


class DrainingServer(ls.LitServer if ls is not None else object):  # type: ignore[misc]
    """LitServe's server with a shutdown that drains (``main`` turns SIGTERM/SIGINT into it):
    the main process closes its copy of the listening socket; each API process gets SIGTERM, on
    which uvicorn stops accepting and waits up to ``drain_timeout`` seconds for the requests in
    flight (``RequestGate`` answers 503 to those it then cancels); once the API processes have
    ended nothing is in flight, and the inference workers (which ignore SIGTERM) and LitServe's
    queue manager are stopped. Runs once, whoever calls it (signal or LitServe's worker monitor)."""

    drain_timeout = 20.0
    listen_sockets: list = []
    stopped = False

    def _start_server(self, port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs):  # type: ignore[no-untyped-def]
        self.listen_sockets = list(sockets or [])
        return super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason="normal"):  # type: ignore[no-untyped-def]
        if self.stopped:
            return
        self.stopped = True
        for sock in self.listen_sockets:
            sock.close()
        api_processes = [w for w in uvicorn_workers.values() if hasattr(w, "terminate")]
        for w in api_processes:
            if w.is_alive():
                w.terminate()
        deadline = time.monotonic() + self.drain_timeout + 10  # uvicorn's own deadline, then its 503s and exit
        for w in api_processes:
            w.join(max(0.1, deadline - time.monotonic()))
            if w.is_alive():
                w.kill()
                w.join(5)
        for worker in getattr(self, "inference_workers", []):
            worker.kill()
            worker.join(5)
        self._transport.close(send_sentinel=False)
        manager.shutdown()


def stop_children(timeout: float = 5.0) -> None:
    """Every child process this one started that is still running: SIGTERM, then SIGKILL after
    ``timeout`` seconds (the last guard against orphans, e.g. a signal during start-up)."""
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join(timeout)


def build_server(cfg: DictConfig) -> Any:
    """The ``litserve.LitServer`` for ``cfg`` (a structured ``ServeConfig``), not yet running. The
    scorer file is read here, once: its checked bytes and sha256 go to every worker and to ``/info``."""
    import torch

    from anogan.deploy.api import Detector, _check_rule, trainer_settings
    from anogan.engine.artifact import file_digest, resolve_path

    artifact = resolve_path(cfg.ckpt)
    threshold = _parse_threshold(cfg.threshold)
    _check_rule(threshold)
    trainer_settings(cfg.device, "32-true")  # device=cuda without a GPU: one line now, not in the worker
    for key in ("max_batch_size", "max_images", "max_bytes", "max_pixels", "max_request_pixels", "max_response_bytes"):
        if cfg[key] < 1:
            raise ServeError(f"{key}={cfg[key]}: use a whole number >= 1")
    for key in ("workers", "port"):
        if cfg[key] < 1:
            raise ServeError(f"{key}={cfg[key]}: use a whole number >= 1")
    if cfg.batch_timeout < 0 or cfg.timeout <= cfg.batch_timeout:
        raise ServeError(f"batch_timeout={cfg.batch_timeout}, timeout={cfg.timeout}: use 0 <= batch_timeout < timeout")
    for key in ("body_timeout", "drain_timeout"):
        if not cfg[key] > 0:
            raise ServeError(f"{key}={cfg[key]}: use a number of seconds > 0")
    try:
        data = artifact.read_bytes()
        st = artifact.stat()
    except OSError as err:
        raise ServeError(f"cannot read {artifact}: {err.strerror or err}") from None
    loaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sha256 = file_digest(data)
    detector = Detector(artifact, device="cpu", data=data)  # checked here: a bad file is one line before any worker starts
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    metadata = {
        "scorer_file": str(artifact),
        "sha256": sha256,
        "size_bytes": len(data),
        "loaded_at": loaded_at,
        "scorer": type(detector.scorer).__name__,
        "image_size": detector.image_size,
        "channels": detector.channels,
        "resize": detector.resize,
        "rule": detector.rule if threshold is None else threshold,
        "thresholds": {k: _finite(v) if isinstance(v, (int, float)) else v for k, v in detector.thresholds.items()},
        "provenance": {k: str(v) for k, v in detector.provenance.items()},
        "run": run_facts(artifact),
    }
    del detector
    api = ScorerAPI(
        str(artifact),
        cfg.device,
        threshold,
        cfg.max_batch_size,
        cfg.batch_timeout,
        cfg.max_pixels,
        data=data,
        sha256=sha256,
        max_request_pixels=cfg.max_request_pixels,
        max_response_bytes=cfg.max_response_bytes,
    )
    server = DrainingServer(
        api,
        accelerator="cuda" if on_gpu else "cpu",
        devices=1,
        workers_per_device=cfg.workers,
        timeout=cfg.timeout,
        model_metadata=metadata,
        middlewares=[
            (RequestGate, {"max_bytes": cfg.max_bytes, "max_images": cfg.max_images, "body_timeout": cfg.body_timeout}),
            (ScorerFileWatch, {"path": str(artifact), "sha256": sha256, "stat_key": (st.st_size, st.st_mtime_ns, st.st_ino)}),
        ],
    )
    add_page(server.app)  # GET /: the page for people (anogan.deploy.page)
    server.drain_timeout = float(cfg.drain_timeout)
    server.uvicorn_graceful_timeout = float(cfg.drain_timeout)  # uvicorn's timeout_graceful_shutdown in each API process
    return server


def _parse_threshold(value: str | float | None) -> str | float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return str(value).strip().lower()


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT (to this process or its group), then drain and stop
    (``DrainingServer``): exit 0, one log line. A bad setting or scorer file: one line, exit 2."""
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
    main_pid = os.getpid()
    received: list[tuple[int, float]] = []  # (signal, when)

    def on_signal(sig: int, frame: object) -> None:
        # Forked children (LitServe's queue manager; the API processes once uvicorn hands the
        # signal back) inherit this handler: there it does nothing, the main process stops them.
        if os.getpid() != main_pid or received:
            return
        received.append((sig, time.monotonic()))
        raise KeyboardInterrupt  # LitServe's run() answers it with the (draining) shutdown

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        server.run(host=cfg.host, port=cfg.port, generate_client_file=False, num_api_servers=1, log_level="warning")
    except KeyboardInterrupt:  # a signal before LitServe's run() was listening for it
        pass
    except Exception as err:  # a worker that failed to start, or died
        log.error("anogan-serve stopped: %s", " ".join(str(err).split()) or type(err).__name__)
        code = 2 if "failed to start" in str(err) else 1
    finally:
        stop_children()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        sig, at = received[0]
        log.info(
            "anogan-serve stopped on %s in %.1f s (drain_timeout=%g s): every process ended, port %d free",
            signal.Signals(sig).name,
            time.monotonic() - at,
            cfg.drain_timeout,
            cfg.port,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
