"""Why the middleware refuses a request: typed errors, each with its HTTP status, reason ``code`` and the bounded
``reason`` label of ``tenantserve_auth_failures_total``. ``to_body`` is the single translation to the wire: the one
error body of ``tenantserve.api_errors`` (vLLM's shape, ``type`` named from the status as vLLM names it)."""

from __future__ import annotations

from typing import Any

from tenantserve.api_errors import body_of, error_body
from tenantserve.errors import Reason, TenantserveError


class AccessError(TenantserveError):
    """A request the middleware answers itself instead of passing it to vLLM."""

    http_status = 403
    reason = "forbidden"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param)

    def to_body(self) -> dict[str, Any]:
        return body_of(self)


class MissingKey(AccessError):
    http_status, code, reason = 401, Reason.MISSING_API_KEY, "missing_key"


class InvalidKey(AccessError):
    http_status, code, reason = 401, Reason.INVALID_API_KEY, "invalid_key"


class RevokedKey(InvalidKey):
    reason = "revoked_key"


class AdminOnly(AccessError):
    code, reason = Reason.ADMIN_ONLY, "admin_route"


class RouteNotFound(AccessError):
    """A tenant key on a route that is not a tenant route: vLLM's status and text for a route that does not exist,
    in the OpenAI error shape (vLLM's own body there is Starlette's ``{"detail": "Not Found"}``). Every such route
    answers these same bytes, so tenants cannot tell admin routes from missing ones."""

    http_status, code, reason = 404, Reason.NOT_FOUND, "no_route"

    def __init__(self) -> None:
        super().__init__("Not Found")

    def to_body(self) -> dict[str, Any]:
        return error_body(404, 404, "Not Found", type="Not Found")  # vLLM's HTTPException answer, byte for byte


class LoopbackOnly(AccessError):
    code, reason = Reason.LOOPBACK_ONLY, "not_loopback"


class AdminDisabled(AccessError):
    code, reason = Reason.ADMIN_DISABLED, "admin_disabled"


class ModelNotFound(AccessError):
    """Answered exactly like vLLM answers an unknown model (integer ``code``), so other tenants' adapter names do
    not leak."""

    http_status, code, reason, param = 404, Reason.MODEL_NOT_FOUND, "model_denied", "model"

    def __init__(self, model: object) -> None:
        shown = str(model) if len(str(model)) <= 256 else str(model)[:256] + "..."
        super().__init__(f"The model `{shown}` does not exist.")

    def to_body(self) -> dict[str, Any]:
        return error_body(404, 404, self.message, param="model")


class RateLimited(AccessError):
    """Too many sequences in flight; ``retry_after`` (whole seconds, ``policy.retry_after``) becomes the
    ``Retry-After`` header."""

    http_status, code, reason = 429, Reason.RATE_LIMITED, "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"retry-after": str(retry_after)}


class BodyTooLarge(AccessError):
    http_status, code, reason = 413, Reason.BODY_TOO_LARGE, "body_too_large"


class BadBody(AccessError):
    http_status, code, reason = 400, Reason.INVALID_JSON, "bad_body"


class InvalidParameter(AccessError):
    http_status, code, reason = 400, Reason.INVALID_PARAMETER, "bad_body"


class TooManySequences(AccessError):
    """One request asking for more sequences (n x prompts) than the tenant may run: it would step around the
    in-flight limit in one go and slow every other tenant down."""

    http_status, code, reason = 400, Reason.TOO_MANY_SEQUENCES, "too_many_sequences"


class IdentityUnavailable(AccessError):
    """The identity challenge needs the admin token, and none is configured: answered like a missing route."""

    http_status, code, reason = 404, Reason.ADMIN_DISABLED, "admin_disabled"


class RegistryUnavailable(AccessError):
    http_status, code, reason = 503, Reason.REGISTRY_UNAVAILABLE, "no_registry"
