"""The admin API's front door, before any route reads a byte of the body: the admin token, then a body-size cap.

An unauthenticated client never gets its body read (``/admin/...`` without the right bearer token: 401 from the
headers alone), and no client can make the sidecar buffer more than ``MAX_BODY_BYTES``: a larger ``Content-Length``
is 413 at once, a chunked body is read only up to the cap (413 past it). Both in the one error body
(``tenantserve.api_errors``). The routes' ``require_admin`` dependency still checks the token too.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantserve.errors import Reason
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.http import error_response, token_refusal

#: Every admin body is a few hundred bytes (a name, a path, a fingerprint); 1 MiB leaves room and bounds memory.
MAX_BODY_BYTES = 1024 * 1024


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class AdminGate:
    """ASGI middleware: the token for ``/admin`` from the headers alone, then every body capped (``max_body``)."""

    def __init__(self, app: ASGIApp, *, config: SidecarConfig, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.config, self.max_body = app, config, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == "/admin" or path.startswith("/admin/"):
            refused = token_refusal(self.config, _header(scope, b"authorization"))
            if refused is not None:
                return await error_response(401, *refused)(scope, receive, send)
        too_big = error_response(413, Reason.BODY_TOO_LARGE, f"the request body is larger than {self.max_body} bytes")
        length = _header(scope, b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_body):
            if not length.strip().isdigit():
                bad_length = error_response(400, Reason.MALFORMED_REQUEST, "invalid Content-Length")
                return await bad_length(scope, receive, send)
            return await too_big(scope, receive, send)
        if length is None and _header(scope, b"transfer-encoding") is None:
            return await self.app(scope, receive, send)  # no body
        messages: list[Message] = []
        size = 0
        while True:  # at most max_body bytes are held: read it all here, then replay it to the app
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return await too_big(scope, receive, send)
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        await self.app(scope, replayed, send)
