"""Why the middleware refuses a request: typed errors, each with its HTTP status, OpenAI error type, and the bounded
``reason`` label of ``tenantserve_auth_failures_total``. ``to_body`` is the single translation to the wire."""

from __future__ import annotations

from typing import Any

from tenantserve.errors import TenantserveError


class AccessError(TenantserveError):
    """A request the middleware answers itself instead of passing it to vLLM."""

    http_status = 403
    error_type = "permission_error"
    reason = "forbidden"
    headers: dict[str, str] = {}
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class MissingKey(AccessError):
    http_status, error_type, code, reason = 401, "authentication_error", "missing_api_key", "missing_key"


class InvalidKey(AccessError):
    http_status, error_type, code, reason = 401, "authentication_error", "invalid_api_key", "invalid_key"


class RevokedKey(InvalidKey):
    reason = "revoked_key"


class AdminOnly(AccessError):
    code, reason = "admin_only", "admin_route"


class RouteNotFound(AccessError):
    """A tenant key on a route that is not a tenant route: vLLM's status and text for a route that does not exist,
    in the OpenAI error shape (vLLM's own body there is Starlette's ``{"detail": "Not Found"}``). Every such route
    answers these same bytes, so tenants cannot tell admin routes from missing ones."""

    http_status, error_type, reason = 404, "Not Found", "no_route"

    def __init__(self) -> None:
        super().__init__("Not Found")

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": "Not Found", "type": "Not Found", "param": None, "code": 404}}


class LoopbackOnly(AccessError):
    code, reason = "loopback_only", "not_loopback"


class AdminDisabled(AccessError):
    code, reason = "admin_disabled", "admin_disabled"


class ModelNotFound(AccessError):
    """Answered exactly like vLLM answers an unknown model, so other tenants' adapter names do not leak."""

    http_status, error_type, code, reason = 404, "NotFoundError", "model_not_found", "model_denied"

    def __init__(self, model: object) -> None:
        shown = str(model) if len(str(model)) <= 256 else str(model)[:256] + "..."
        super().__init__(f"The model `{shown}` does not exist.")

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": "model", "code": 404}}


class RateLimited(AccessError):
    """Too many sequences in flight; ``retry_after`` (whole seconds, ``policy.retry_after``) becomes the
    ``Retry-After`` header."""

    http_status, error_type, code, reason = 429, "rate_limit_error", "rate_limited", "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"retry-after": str(retry_after)}


class BodyTooLarge(AccessError):
    http_status, error_type, code, reason = 413, "invalid_request_error", "body_too_large", "body_too_large"


class BadBody(AccessError):
    http_status, error_type, code, reason = 400, "invalid_request_error", "invalid_json", "bad_body"


class InvalidParameter(AccessError):
    http_status, error_type, code, reason = 400, "invalid_request_error", "invalid_parameter", "bad_body"


class TooManySequences(AccessError):
    """One request asking for more sequences (n x prompts) than the tenant may run: it would step around the
    in-flight limit in one go and slow every other tenant down."""

    http_status, error_type, code, reason = 400, "invalid_request_error", "too_many_sequences", "too_many_sequences"


class IdentityUnavailable(AccessError):
    """The identity challenge needs the admin token, and none is configured: answered like a missing route."""

    http_status, error_type, code, reason = 404, "NotFoundError", "admin_disabled", "admin_disabled"


class RegistryUnavailable(AccessError):
    http_status, error_type, code, reason = 503, "service_unavailable", "registry_unavailable", "no_registry"
