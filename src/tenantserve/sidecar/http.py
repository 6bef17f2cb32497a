"""HTTP edges shared by every route: the admin bearer check, and the one error shape.

Every error (ours, FastAPI's validation errors, unknown routes) leaves as ``{"error": {"message", "type", "code"}}``
with a real status: 400 admission refused (code = the reason) or a body nested too deeply to parse
(``json_too_deep``), 401 no/wrong token, 404 unknown, 409 duplicate,
413 a body over the cap (``sidecar.gate``), 422 malformed body, 502 engine failure, 503 registry not writable.
"""

from __future__ import annotations

import hmac
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tenantserve.errors import TenantserveError
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.errors import Unauthorized


def error_response(status: int, code: str, message: str) -> JSONResponse:
    kind = HTTPStatus(status).phrase.replace(" ", "") + "Error" if status in HTTPStatus._value2member_map_ else "Error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TenantserveError)
    async def _ours(_: Request, exc: TenantserveError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "malformed_request", "; ".join(parts) or "malformed request")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:  # a bug: still the one shape, no traceback out
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the sidecar's log")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):  # FastAPI's body parse failed
            return error_response(400, "json_too_deep", "the JSON body is nested too deeply")
        if exc.status_code == 400 and exc.__cause__ is not None:
            reason = type(exc.__cause__).__name__
            return error_response(400, "malformed_request", f"the body cannot be parsed: {reason}")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_refusal(config: SidecarConfig, authorization: str | None) -> tuple[str, str] | None:
    """(code, message) when ``authorization`` does not carry the admin token; None when it does (or in insecure dev
    mode without a token). Constant-time comparison."""
    expected = config.admin_token
    if config.insecure and not expected:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return "missing_token", "admin API: send 'Authorization: Bearer <TENANTSERVE_ADMIN_TOKEN>'"
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        return "invalid_token", "admin API: invalid admin token"
    return None


async def require_admin(request: Request) -> None:
    """FastAPI dependency: the admin token, compared in constant time (skipped only in insecure dev mode)."""
    refused = token_refusal(request.app.state.config, request.headers.get("authorization"))
    if refused is not None:
        raise Unauthorized(refused[1], code=refused[0])
