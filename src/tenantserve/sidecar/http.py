"""HTTP edges shared by every route: the admin bearer check, and the one error body.

Every error (ours, FastAPI's validation errors, unknown routes) leaves as ``tenantserve.api_errors``' body,
``{"error": {"message", "type", "param", "code"}}`` (vLLM's shape), with a real status: 400 admission refused
(code = the reason) or a body nested too deeply to parse (``json_too_deep``), 401 no/wrong token, 404 unknown,
409 duplicate, 413 a body over the cap (``sidecar.gate``), 422 malformed body, 502 engine failure, 503 registry not
writable.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tenantserve.api_errors import body_of, error_body
from tenantserve.bearer import bearer_token
from tenantserve.errors import Reason, TenantserveError
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.errors import Unauthorized


def error_response(status: int, code: str, message: str, *, param: str | None = None) -> JSONResponse:
    """The one error body (``api_errors.error_body``) as a response with ``status``."""
    return JSONResponse(error_body(status, code, message, param=param), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TenantserveError)
    async def _ours(_: Request, exc: TenantserveError) -> JSONResponse:
        return JSONResponse(body_of(exc), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, Reason.MALFORMED_REQUEST, "; ".join(parts) or "malformed request")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:  # a bug: still the one shape, no traceback out
        return error_response(500, Reason.INTERNAL_ERROR,
                              f"internal error ({type(exc).__name__}); see the sidecar's log")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):  # FastAPI's body parse failed
            return error_response(400, Reason.JSON_TOO_DEEP, "the JSON body is nested too deeply")
        if exc.status_code == 400 and exc.__cause__ is not None:
            reason = type(exc.__cause__).__name__
            return error_response(400, Reason.MALFORMED_REQUEST, f"the body cannot be parsed: {reason}")
        code = {404: Reason.NOT_FOUND, 405: Reason.METHOD_NOT_ALLOWED}.get(exc.status_code, Reason.HTTP_ERROR)
        return error_response(exc.status_code, code, str(exc.detail))


def token_refusal(config: SidecarConfig, authorization: str | None) -> tuple[Reason, str] | None:
    """(code, message) when the ``authorization`` header value does not carry the admin token; None when it does
    (or in insecure dev mode without a token). Constant-time comparison."""
    expected = config.admin_token
    if config.insecure and not expected:
        return None
    token = bearer_token(authorization)
    if token is None:
        return Reason.MISSING_TOKEN, "admin API: send 'Authorization: Bearer <TENANTSERVE_ADMIN_TOKEN>'"
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        return Reason.INVALID_TOKEN, "admin API: invalid admin token"
    return None


async def require_admin(request: Request) -> None:
    """FastAPI dependency: the admin token, compared in constant time (skipped only in insecure dev mode)."""
    refused = token_refusal(request.app.state.config, request.headers.get("authorization"))
    if refused is not None:
        raise Unauthorized(refused[1], code=refused[0])
