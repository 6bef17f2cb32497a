"""Who may do what: pure decisions over an immutable ``AccessView`` of the registry. No I/O, no clock.

Routes are classified deny-by-default: a short list is public (health), ``/metrics`` has its own rule, a short list
carries tenant traffic (each with a ``model`` field the ACL checks), and *everything else* needs the admin token —
so load/unload, the SageMaker ``/adapters`` routes, sleep/wake, profiling, RPC and any route a later vLLM adds.
A tenant key on such a route gets vLLM's 404 for a missing route (``RouteNotFound``): admin routes are not revealed.
A tenant route with a trailing slash is redirected (307) to its canonical path, as vLLM's router does, so the ACL
runs on the request vLLM finally serves.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, final

from tenantserve.engine.identity import IDENTITY_ROUTE
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
    RouteNotFound,
    TooManySequences,
)
from tenantserve.registry.keys import key_digest, key_index, lookup
from tenantserve.registry.schema import Registry
from tenantserve.settings import ADMIN_TOKEN_ENV

PUBLIC_ROUTES = frozenset({("GET", "/health"), ("HEAD", "/health"), ("GET", "/ping"), ("POST", "/ping")})
#: Tenant routes whose JSON body names the model: the ACL applies to every one of them.
MODEL_ROUTES = frozenset({
    "/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
    "/tokenize", "/detokenize",
})
MODELS_LIST = "/v1/models"
#: ``GET /v1/models/{id}`` (the OpenAI SDK's ``models.retrieve``); vLLM has no such route, the middleware answers it.
MODEL_CARD_PREFIX = MODELS_LIST + "/"
#: vLLM's own rule for a client's ``cache_salt`` (``validate_cache_salt``): checked before the tenant's replaces it.
CACHE_SALT_MAX_CHARS = 128
CACHE_SALT_FORBIDDEN = frozenset("@/\\\0")
#: ``Retry-After`` bounds in whole seconds (RFC 9110 allows no fractions): jitter spreads waiting clients over
#: at least ``RETRY_JITTER_SECONDS`` so they do not come back in lockstep.
RETRY_AFTER_MIN, RETRY_AFTER_MAX, RETRY_JITTER_SECONDS = 1, 30, 2.0


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
    MODEL_CARD = "model_card"  # GET /v1/models/{id}: one card from the caller's list
    REDIRECT = "redirect"  # a tenant route with a trailing slash: 307 to the canonical path
    INFERENCE = "inference"
    IDENTITY = "identity"  # POST /tenantserve/identity: proves the admin token without needing it
    ADMIN = "admin"


def classify(method: str, path: str) -> Route:
    if path.endswith("/") and canonical_path(method, path) is not None:
        return Route.REDIRECT
    return _classify(method, path)


def canonical_path(method: str, path: str) -> str | None:
    """The path vLLM's router redirects ``path`` to (trailing slashes stripped, Starlette's rule) when that is a
    tenant route for ``method``; None otherwise (any other route keeps its own rules)."""
    stripped = path.rstrip("/")
    if not stripped or stripped == path:
        return None
    return stripped if _classify(method, stripped) in (Route.MODELS, Route.MODEL_CARD, Route.INFERENCE) else None


def model_card_id(path: str) -> str:
    """The model id of a ``/v1/models/{id}`` path (may contain ``/``, as base model names do)."""
    return path[len(MODEL_CARD_PREFIX):]


def _classify(method: str, path: str) -> Route:
    if (method, path) in PUBLIC_ROUTES:
        return Route.PUBLIC
    if method == "POST" and path == IDENTITY_ROUTE:
        return Route.IDENTITY
    if path == "/metrics" or path.startswith("/metrics/"):
        return Route.METRICS
    if method == "GET" and path == MODELS_LIST:
        return Route.MODELS
    if method == "GET" and path.startswith(MODEL_CARD_PREFIX) and len(path) > len(MODEL_CARD_PREFIX):
        return Route.MODEL_CARD
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
    admin_token_env: str = ADMIN_TOKEN_ENV

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
            admin_digest=key_digest(admin) if admin else None,
            metrics_digest=key_digest(metrics) if metrics else None,
            admin_loopback_only=sec.admin_loopback_only,
            max_body_bytes=sec.max_body_bytes,
            all_models=frozenset({base, *(a.name for t in registry.tenants for a in t.adapters)}),
            sequence_caps={t.id: t.max_sequences_per_request or sec.max_sequences_per_request
                           for t in registry.tenants},
            admin_token_env=sec.admin_token_env,
        )

    def is_admin(self, token: str | None) -> bool:
        if not token or self.admin_digest is None:
            return False
        return hmac.compare_digest(key_digest(token), self.admin_digest)

    def tenant_for(self, token: str | None) -> Caller:
        """The tenant id a tenant token belongs to (or ``ADMIN``); raises when there is none."""
        if not token:
            raise MissingKey("no API key: send 'Authorization: Bearer <key>'")
        if self.is_admin(token):
            return ADMIN
        tenant = lookup(self.keys, token)
        if tenant is None:
            if key_digest(token) in self.revoked:
                raise RevokedKey("this API key has been revoked")
            raise InvalidKey("invalid API key")
        return tenant

    def allowed_models(self, caller: Caller) -> frozenset[str]:
        return self.all_models if caller is ADMIN else self.models.get(caller, frozenset())

    def check_model(self, caller: Caller, model: object) -> str:
        """The model name if ``caller`` may use it; an omitted model means the base (vLLM's default).
        The admin (the sidecar warming up an adapter it just loaded) reaches whatever vLLM serves.
        A model that is not a string is 400 ``InvalidParameter`` (vLLM's answer); a name the caller may not use
        is 404 ``ModelNotFound``, exactly like a name that exists nowhere."""
        name = self.base if model is None else model
        if not isinstance(name, str):
            raise InvalidParameter(f"'model' must be a string, got {_json_type(name)}", param="model")
        if caller is not ADMIN and name not in self.allowed_models(caller):
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


def check_client_salt(data: Mapping[str, Any]) -> None:
    """Refuse a client ``cache_salt`` vLLM would refuse (400, vLLM's message), before the tenant's replaces it:
    a client sees the same answer with or without the middleware."""
    salt = data.get("cache_salt")
    if salt is None:
        return
    if not isinstance(salt, str) or not salt:
        raise InvalidParameter("Parameter 'cache_salt' must be a non-empty string if provided.", param="cache_salt")
    if len(salt) > CACHE_SALT_MAX_CHARS or any(c in CACHE_SALT_FORBIDDEN for c in salt):
        raise InvalidParameter(f"Parameter 'cache_salt' must be at most {CACHE_SALT_MAX_CHARS} characters and must "
                               "not contain '@', '/', '\\\\', or NUL.", param="cache_salt")


def check_tenant_priority(data: Mapping[str, Any]) -> None:
    """A tenant may not set its own scheduling ``priority`` (the operator's choice: with
    ``--scheduling-policy priority`` a tenant sending -100 would jump every other tenant's queue); absent or 0 only."""
    priority = data.get("priority")
    if priority is None or (priority == 0 and not isinstance(priority, bool)):
        return
    raise InvalidParameter("Parameter 'priority' is set by the operator, not per request; leave it out",
                           param="priority")


def retry_after(typical_seconds: float | None, in_flight: int, rng: random.Random | None = None) -> int:
    """Seconds a refused (429) client should wait, for ``Retry-After``: about how long until one of the tenant's
    ``in_flight`` requests ends (its typical request duration, or 1 s before it has one, shared between them),
    stretched by a random factor of 1-2 plus up to ``RETRY_JITTER_SECONDS`` of random jitter, rounded up to whole
    seconds and bounded to ``RETRY_AFTER_MIN..RETRY_AFTER_MAX``."""
    rng = rng or random.Random()
    typical = 1.0 if typical_seconds is None or not math.isfinite(typical_seconds) else max(typical_seconds, 0.0)
    expected = typical / max(in_flight, 1)
    seconds = expected * rng.uniform(1.0, 2.0) + rng.uniform(0.0, RETRY_JITTER_SECONDS)
    return min(max(math.ceil(seconds), RETRY_AFTER_MIN), RETRY_AFTER_MAX)


def requested_sequences(data: Mapping[str, Any]) -> int:
    """Sequences one request makes the engine run: prompts x max(n, best_of) (``n`` is also the beam width).
    A ``prompt`` list of strings or of token lists is several prompts; a list of ints is one tokenized prompt.
    ``n``/``best_of`` that are not plain integers are refused here (pydantic would coerce ``"1024"``)."""
    width = max(_positive_int(data, "n"), _positive_int(data, "best_of"))
    prompts = max(_prompt_count(data.get("prompt")), _prompt_count(data.get("prompt_embeds")))
    return prompts * width


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


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
    """The caller (tenant id, ``ADMIN``) or None for open routes; raises an ``AccessError`` when refused.
    Tenant routes (and their trailing-slash redirects) take any live key; other routes need the admin token, and a
    tenant key there is ``RouteNotFound`` (404)."""
    if route in (Route.PUBLIC, Route.IDENTITY):
        return None
    if route is Route.METRICS:
        if is_loopback(client) or (token and view.metrics_digest and hmac.compare_digest(key_digest(token),
                                                                                        view.metrics_digest)):
            return None
        if not token:
            raise MissingKey("/metrics off loopback needs the metrics token")
        raise InvalidKey("invalid metrics token")
    if route is Route.ADMIN:
        return _authorize_admin(view, token, client)
    return view.tenant_for(token)


def _authorize_admin(view: AccessView, token: str | None, client: str | None) -> Admin:
    if token and not view.is_admin(token) and lookup(view.keys, token) is not None:
        raise RouteNotFound()  # a tenant: no admin route exists for it, from anywhere
    if view.admin_loopback_only and not is_loopback(client):
        raise LoopbackOnly("admin routes answer only on loopback")
    if view.admin_digest is None:
        raise AdminDisabled("admin routes are disabled: no admin token is configured")
    if view.is_admin(token):
        return ADMIN
    if not token:
        raise MissingKey("admin route: send 'Authorization: Bearer <admin token>'")
    raise AdminOnly("this route needs the admin token")


__all__ = ["ADMIN", "AccessError", "AccessView", "Admin", "Caller", "Route", "authorize", "canonical_path",
           "check_client_salt", "classify", "is_loopback", "model_card_id", "requested_sequences",
           "retry_after"]
