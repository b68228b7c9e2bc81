"""The ASGI middlewares in front of ``anogan-serve``'s LitServe app: ``RequestGate`` checks a
``POST /predict`` request's envelope (size, arrival time, content type, fields, image count) before
LitServe queues it, and ``ScorerFileWatch`` makes ``GET /health`` say when the scorer file on disk is
no longer the one served. A refused request is answered 4xx with ``{"detail": "<one line>"}``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("anogan.deploy.middleware")

API_PATH = "/predict"


class BadRequest(Exception):
    """A request that cannot be scored: ``status`` (4xx) and a one-line ``reason``."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


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


def form_flag(value: object) -> bool | str:
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
        form_flag(form.get("maps", "false"))
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
