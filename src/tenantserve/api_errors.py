"""The one error body of every HTTP answer tenantserve writes itself: the sidecar's admin API and the engine's
middleware both send vLLM's ``ErrorResponse`` shape, ``{"error": {"message", "type", "param", "code"}}``.

``code`` is the reason (a ``tenantserve.errors.Reason``); answers that must be byte-identical to one of vLLM's own
(an unknown model, a route that does not exist) carry vLLM's integer status there instead. ``type`` follows the HTTP
status as vLLM names it (``BadRequestError``, ``NotFoundError``, ``InternalServerError``, ...). ``param`` names the
request field at fault, else null.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

from tenantserve.errors import TenantserveError

#: vLLM's ``type`` for the statuses tenantserve answers (``create_error_response``: the status phrase in CamelCase,
#: ``Error`` appended unless it already ends so). Written out so a Python that renames a phrase (3.13: 413 "Content
#: Too Large", 422 "Unprocessable Content") does not change the wire.
ERROR_TYPES = {
    400: "BadRequestError", 401: "UnauthorizedError", 403: "ForbiddenError", 404: "NotFoundError",
    405: "MethodNotAllowedError", 409: "ConflictError", 413: "RequestEntityTooLargeError",
    422: "UnprocessableEntityError", 429: "TooManyRequestsError", 500: "InternalServerError",
    502: "BadGatewayError", 503: "ServiceUnavailableError",
}


class ErrorInfo(BaseModel):
    """vLLM's ``ErrorInfo``, with ``code`` the reason string (an integer status only where vLLM's bytes are copied)."""

    message: str
    type: str
    param: str | None = None
    code: str | int


class ErrorResponse(BaseModel):
    """vLLM's ``ErrorResponse``: the whole body."""

    error: ErrorInfo


def error_type(status: int) -> str:
    """The ``type`` for an HTTP ``status`` (``ERROR_TYPES``; other statuses by vLLM's rule; ``Error`` if unknown)."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    try:
        name = "".join(ch for ch in HTTPStatus(status).phrase if ch.isalnum())
    except ValueError:
        return "Error"
    return name if name.endswith("Error") else name + "Error"


def error_body(status: int, code: str | int, message: str, *, param: str | None = None,
               type: str | None = None) -> dict[str, Any]:
    """The JSON body (a dict) for one refusal. ``type`` overrides ``error_type(status)`` only to copy one of
    vLLM's answers byte for byte (its missing-route 404 says ``"Not Found"``)."""
    info = ErrorInfo(message=message, type=type or error_type(status), param=param, code=code)
    return ErrorResponse(error=info).model_dump(mode="json")


def body_of(exc: TenantserveError) -> dict[str, Any]:
    """The body for a typed error: its status, code, message and param."""
    return error_body(exc.http_status, exc.code, exc.message, param=exc.param)
