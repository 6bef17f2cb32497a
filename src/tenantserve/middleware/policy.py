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

from tenantserve.keys import key_index, lookup
from tenantserve.middleware.errors import (
    AccessError,
    AdminDisabled,
    AdminOnly,
    InvalidKey,
    LoopbackOnly,
    MissingKey,
    ModelNotFound,
    RevokedKey,
)
from tenantserve.registry import Registry

PUBLIC_ROUTES = frozenset({("GET", "/health"), ("HEAD", "/health"), ("GET", "/ping"), ("POST", "/ping")})
#: Tenant routes whose JSON body names the model: the ACL applies to every one of them.
MODEL_ROUTES = frozenset({
    "/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
    "/tokenize", "/detokenize",
})
MODELS_LIST = "/v1/models"
ADMIN = "admin"


class Route(Enum):
    PUBLIC = "public"
    METRICS = "metrics"
    MODELS = "models"  # GET /v1/models: answered per caller
    INFERENCE = "inference"
    ADMIN = "admin"


def classify(method: str, path: str) -> Route:
    if (method, path) in PUBLIC_ROUTES:
        return Route.PUBLIC
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
    limits: Mapping[str, int]  # tenant id -> max requests in flight
    keys: Mapping[bytes, str]  # live key digest -> tenant id
    revoked: frozenset[bytes] = frozenset()
    admin_digest: bytes | None = None
    metrics_digest: bytes | None = None
    admin_loopback_only: bool = True
    max_body_bytes: int = 1 << 20
    all_models: frozenset[str] = field(default=frozenset())

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
        )

    def is_admin(self, token: str | None) -> bool:
        return bool(token) and self.admin_digest is not None and hmac.compare_digest(_digest(token), self.admin_digest)

    def tenant_for(self, token: str | None) -> str:
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

    def allowed_models(self, caller: str) -> frozenset[str]:
        return self.all_models if caller == ADMIN else self.models.get(caller, frozenset())

    def check_model(self, caller: str, model: object) -> str | None:
        """The model name if ``caller`` may use it; an omitted model means the base (vLLM's default).
        The admin (the sidecar warming up an adapter it just loaded) reaches whatever vLLM serves."""
        name = self.base if model is None else model
        if caller == ADMIN:
            return name if isinstance(name, str) else None
        if not isinstance(name, str) or name not in self.allowed_models(caller):
            raise ModelNotFound(name)
        return name

    def limit_for(self, caller: str) -> int | None:
        return None if caller == ADMIN else self.limits.get(caller)


def authorize(view: AccessView, route: Route, token: str | None, client: str | None) -> str | None:
    """The caller (tenant id, ``ADMIN``) or None for open routes; raises an ``AccessError`` when refused."""
    if route is Route.PUBLIC:
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


def _authorize_admin(view: AccessView, token: str | None, client: str | None) -> str:
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


__all__ = ["ADMIN", "AccessError", "AccessView", "Route", "authorize", "classify", "is_loopback", "label"]
