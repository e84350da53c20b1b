"""The API's front door: a pure ASGI middleware that checks the bearer token and bounds the request
body *before* any route runs, so FastAPI never reads, let alone parses, a body it should refuse.

- With ``JOBRUNNER_API_TOKEN`` set, a request to any path but the open ones (``/healthz``, the
  OpenAPI document and its viewers and their assets, and ``/dashboard/``, which has a login of its
  own) without the right ``Authorization: Bearer`` token gets 401 at once; its body is never read.
- A body larger than ``JOBRUNNER_MAX_BODY_BYTES`` gets 413: at once when its Content-Length says
  so, otherwise as soon as the counted ``http.request`` chunks pass the limit (at most the limit
  plus one network chunk is ever held). Routes that stream their body themselves (``POST /files``,
  bounded by ``JOBRUNNER_MAX_UPLOAD_BYTES``) are left to do so.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import token_matches

UNAUTHORIZED = "missing or wrong bearer token"


class BodyTooLarge(HTTPException):
    """The body went past the limit while it was read (FastAPI and Starlette answer it as a 413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large_message(max_bytes))


def too_large_message(max_bytes: int) -> str:
    """The 413's detail."""
    return f"the request body is larger than {max_bytes} bytes (JOBRUNNER_MAX_BODY_BYTES)"


class RequestGuard:
    """Authenticate, then bound the body, before the app sees the request (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: SecretStr | None,
        max_body_bytes: int,
        open_paths: Collection[str],
        open_prefixes: Collection[str] = (),
        streamed: Collection[tuple[str, str]],
    ) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.open_paths = frozenset(open_paths)
        #: Paths under these are open too (the docs' assets; the dashboard, which has its own login).
        self.open_prefixes = tuple(open_prefixes)
        #: (method, path) of the routes that read and bound their body themselves.
        self.streamed = frozenset(streamed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = scope["path"]
        is_open = path in self.open_paths or path.startswith(self.open_prefixes)
        if self.token is not None and not is_open and not self._authorised(headers):
            await _answer(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
            return
        if (scope["method"], path) in self.streamed:
            await self.app(scope, receive, send)
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, too_large_message(self.max_body_bytes))
            return
        await self._bounded(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            # FastAPI's routes answer it themselves (it is an HTTPException); this is for the rest.
            if started:
                raise
            await _answer(send, 413, too_large_message(limit))

    def _authorised(self, headers: Headers) -> bool:
        assert self.token is not None
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token_matches(credentials.strip(), self.token)


def _content_length(headers: Headers) -> int | None:
    # A malformed header is the server's to refuse (uvicorn answers 400 before the app runs).
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The unread rest of the body would otherwise have to be drained for the next request.
        (b"connection", b"close"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
