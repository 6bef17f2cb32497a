"""Who may do what: pure decisions over an immutable ``AccessView`` of the registry. No I/O, no clock.

Routes are classified deny-by-default: a short list is public (health), ``/metrics`` has its own rule, a short list
carries tenant traffic (each with a ``model`` field the ACL checks), and *everything else* needs the admin token —
so load/unload, the SageMaker ``/adapters`` routes, sleep/wake, profiling, RPC and any route a later vLLM adds.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, final

from tenantserve.keys import key_index, lookup
from tenantserve.middleware.errors import (
    AccessError,
    AdminDisabled,
    AdminOnly,
    InvalidKey,
    InvalidParameter,
    LoopbackOnly,
    MissingKey,
    ModelNotFound,
    RevokedKey,
    TooManySequences,
)
from tenantserve.identity import IDENTITY_ROUTE
from tenantserve.registry import Registry

PUBLIC_ROUTES = frozenset({("GET", "/health"), ("HEAD", "/health"), ("GET", "/ping"), ("POST", "/ping")})
#: Tenant routes whose JSON body names the model: the ACL applies to every one of them.
MODEL_ROUTES = frozenset({
    "/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
    "/tokenize", "/detokenize",
})
MODELS_LIST = "/v1/models"


@final
class Admin:
    """The admin caller. A dedicated type, so no tenant id (a ``str``) can ever equal it: a tenant named ``admin``
    is just a tenant. ``label`` is what metrics show for it (a reserved tenant id)."""

    __slots__ = ()
    label = "admin"

    def __repr__(self) -> str:
        return "ADMIN"


ADMIN = Admin()
#: Who is calling: a tenant id, or ``ADMIN``. Compare with ``is ADMIN``.
Caller = str | Admin


class Route(Enum):
    PUBLIC = "public"
    METRICS = "metrics"
    MODELS = "models"  # GET /v1/models: answered per caller
    INFERENCE = "inference"
    IDENTITY = "identity"  # POST /tenantserve/identity: proves the admin token without needing it
    ADMIN = "admin"


def classify(method: str, path: str) -> Route:
    if (method, path) in PUBLIC_ROUTES:
        return Route.PUBLIC
    if method == "POST" and path == IDENTITY_ROUTE:
        return Route.IDENTITY
    if path == "/metrics" or path.startswith("/metrics/"):
        return Route.METRICS
    if method == "GET" and path == MODELS_LIST:
        return Route.MODELS
    if method == "POST" and path in MODEL_ROUTES:
        return Route.INFERENCE
    return Route.ADMIN


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class AccessView:
    """The registry as the middleware needs it, built once per registry version."""

    base: str
    models: Mapping[str, frozenset[str]]  # tenant id -> model names it may use
    limits: Mapping[str, int]  # tenant id -> max sequences in flight
    keys: Mapping[bytes, str]  # live key digest -> tenant id
    revoked: frozenset[bytes] = frozenset()
    admin_digest: bytes | None = None
    metrics_digest: bytes | None = None
    admin_loopback_only: bool = True
    max_body_bytes: int = 1 << 20
    all_models: frozenset[str] = field(default=frozenset())
    sequence_caps: Mapping[str, int] = field(default_factory=dict)  # tenant id -> max sequences per request
    admin_token_env: str = "TENANTSERVE_ADMIN_TOKEN"

    @classmethod
    def build(cls, registry: Registry, environ: Mapping[str, str]) -> AccessView:
        sec = registry.security
        base = registry.base.name
        models = {
            t.id: frozenset([a.name for a in t.adapters] + ([base] if t.allow_base else [])) for t in registry.tenants
        }
        admin, metrics = environ.get(sec.admin_token_env), environ.get(sec.metrics_token_env)
        return cls(
            base=base,
            models=models,
            limits={t.id: t.max_in_flight or sec.max_in_flight for t in registry.tenants},
            keys=key_index(registry),
            revoked=frozenset(bytes.fromhex(k.sha256) for t in registry.tenants for k in t.api_keys if k.revoked),
            admin_digest=_digest(admin) if admin else None,
            metrics_digest=_digest(metrics) if metrics else None,
            admin_loopback_only=sec.admin_loopback_only,
            max_body_bytes=sec.max_body_bytes,
            all_models=frozenset({base, *(a.name for t in registry.tenants for a in t.adapters)}),
            sequence_caps={t.id: t.max_sequences_per_request or sec.max_sequences_per_request
                           for t in registry.tenants},
            admin_token_env=sec.admin_token_env,
        )

    def is_admin(self, token: str | None) -> bool:
        return bool(token) and self.admin_digest is not None and hmac.compare_digest(_digest(token), self.admin_digest)

    def tenant_for(self, token: str | None) -> Caller:
        """The tenant id a tenant token belongs to (or ``ADMIN``); raises when there is none."""
        if not token:
            raise MissingKey("no API key: send 'Authorization: Bearer <key>'")
        if self.is_admin(token):
            return ADMIN
        tenant = lookup(self.keys, token)
        if tenant is None:
            if _digest(token) in self.revoked:
                raise RevokedKey("this API key has been revoked")
            raise InvalidKey("invalid API key")
        return tenant

    def allowed_models(self, caller: Caller) -> frozenset[str]:
        return self.all_models if caller is ADMIN else self.models.get(caller, frozenset())

    def check_model(self, caller: Caller, model: object) -> str | None:
        """The model name if ``caller`` may use it; an omitted model means the base (vLLM's default).
        The admin (the sidecar warming up an adapter it just loaded) reaches whatever vLLM serves."""
        name = self.base if model is None else model
        if caller is ADMIN:
            return name if isinstance(name, str) else None
        if not isinstance(name, str) or name not in self.allowed_models(caller):
            raise ModelNotFound(name)
        return name

    def limit_for(self, caller: Caller) -> int | None:
        """Sequences the caller may have in flight (None: unlimited, the admin)."""
        return None if caller is ADMIN else self.limits.get(caller)

    def check_sequences(self, caller: Caller, sequences: int) -> None:
        """Refuse a request asking for more sequences than the tenant may ever run at once (400, not an endless
        429): above its per-request cap, or above its whole in-flight limit."""
        if caller is ADMIN:
            return
        cap = min(self.sequence_caps.get(caller, sequences), self.limits.get(caller, sequences))
        if sequences > cap:
            raise TooManySequences(f"this request asks for {sequences} sequences (n x prompts, or best_of); "
                                   f"this key may ask for at most {cap} per request")


def requested_sequences(data: Mapping[str, Any]) -> int:
    """Sequences one request makes the engine run: prompts x max(n, best_of) (``n`` is also the beam width).
    A ``prompt`` list of strings or of token lists is several prompts; a list of ints is one tokenized prompt.
    ``n``/``best_of`` that are not plain integers are refused here (pydantic would coerce ``"1024"``)."""
    width = max(_positive_int(data, "n"), _positive_int(data, "best_of"))
    prompts = max(_prompt_count(data.get("prompt")), _prompt_count(data.get("prompt_embeds")))
    return prompts * width


def _positive_int(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"'{name}' must be an integer, got {type(value).__name__}")
    return max(value, 1)


def _prompt_count(prompt: object) -> int:
    if isinstance(prompt, list) and prompt and not all(isinstance(x, int) for x in prompt):
        return len(prompt)
    return 1


def authorize(view: AccessView, route: Route, token: str | None, client: str | None) -> Caller | None:
    """The caller (tenant id, ``ADMIN``) or None for open routes; raises an ``AccessError`` when refused."""
    if route in (Route.PUBLIC, Route.IDENTITY):
        return None
    if route is Route.METRICS:
        if is_loopback(client) or (token and view.metrics_digest and hmac.compare_digest(_digest(token),
                                                                                        view.metrics_digest)):
            return None
        if not token:
            raise MissingKey("/metrics off loopback needs the metrics token")
        raise InvalidKey("invalid metrics token")
    if route is Route.ADMIN:
        return _authorize_admin(view, token, client)
    return view.tenant_for(token)


def _authorize_admin(view: AccessView, token: str | None, client: str | None) -> Admin:
    if view.admin_loopback_only and not is_loopback(client):
        raise LoopbackOnly("admin routes answer only on loopback")
    if view.admin_digest is None:
        raise AdminDisabled("admin routes are disabled: no admin token is configured")
    if view.is_admin(token):
        return ADMIN
    if not token:
        raise MissingKey("admin route: send 'Authorization: Bearer <admin token>'")
    raise AdminOnly("this route needs the admin token")


def label(value: str | None, allowed: frozenset[str] | Mapping[str, object], other: str) -> str:
    """A bounded Prometheus label: known values pass, anything else becomes ``other``."""
    return value if value is not None and value in allowed else other


__all__ = ["ADMIN", "AccessError", "AccessView", "Admin", "Caller", "Route", "authorize", "classify", "is_loopback",
           "label", "requested_sequences"]
