"""``TenantMiddleware``: the ASGI class vLLM loads with ``--middleware tenantserve.middleware.TenantMiddleware``.

It is the outermost layer of vLLM's FastAPI app (no extra network hop). Per request: classify the route, find the
caller, and for tenant traffic read the JSON body (bounded in size and depth), check the model against the tenant's
ACL and the sequences it asks for against its limits, take in-flight slots, then hand vLLM the checked document
re-serialized, with the tenant's ``cache_salt`` on every route whose body model has that field. ``GET /v1/models``
is filtered to what the caller may use, and ``GET /v1/models/{id}`` (which vLLM lacks) answers one card of that list
or the unknown-model 404. A tenant route with a trailing slash gets vLLM's 307 to the canonical path. Per-tenant
metrics count tenant traffic only: the admin (the sidecar's polling, warm-ups) appears in no per-tenant series.
At startup it disables vLLM's adapter selection by content-part type
(``adapter_guard``) and finds the salted routes in the app's own route table.
Decisions live in ``policy`` (pure); this module only moves bytes, counts, and turns ``AccessError`` into a response.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry

from tenantserve.bearer import bearer_token
from tenantserve.engine import identity
from tenantserve.middleware import adapter_guard
from tenantserve.middleware.body import json_object
from tenantserve.middleware.errors import (
    AccessError,
    BadBody,
    BodyTooLarge,
    IdentityUnavailable,
    ModelNotFound,
    RateLimited,
    RegistryUnavailable,
)
from tenantserve.middleware.metrics import TenantMetrics
from tenantserve.middleware.policy import (
    ADMIN,
    MODELS_LIST,
    AccessView,
    Caller,
    Route,
    authorize,
    canonical_path,
    check_client_salt,
    check_tenant_priority,
    classify,
    model_card_id,
    requested_sequences,
    retry_after,
)
from tenantserve.registry.metric_labels import ANONYMOUS_LABEL, OTHER_LABEL, bounded_label
from tenantserve.registry.schema import Registry
from tenantserve.registry.watch import RegistryWatcher
from tenantserve.settings import CACHE_SALT_SECRET_ENV as SALT_SECRET_ENV  # a fresh one per launch
from tenantserve.settings import REGISTRY_ENV
from tenantserve.vllm_plugin.patching import when_imported

Scope = dict[str, Any]
Message = dict[str, Any]

log = logging.getLogger("tenantserve.middleware")

#: The one field a tenant's model card keeps (OpenAI's; vLLM adds ``root``, a server path, and ``parent``).
MODEL_CARD_FIELDS = ("id", "object", "created", "owned_by")
IDENTITY_MAX_BODY = 1024
#: Weight of the newest request in a tenant's typical request duration (an exponential moving average).
DURATION_EWMA_WEIGHT = 0.2


class TenantMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        registry_path: Path | str | None = None,
        environ: Mapping[str, str] | None = None,
        metrics_registry: CollectorRegistry | None = None,
        reload_interval: float = 0.0,
    ) -> None:
        environ = os.environ if environ is None else environ
        path = registry_path or environ.get(REGISTRY_ENV)
        if not path:
            raise RuntimeError(f"tenantserve middleware: set {REGISTRY_ENV} to the registry file")
        self.app = app
        self.environ = environ
        #: The registry file, stat'ed per request (``reload_interval`` 0) and reloaded when it changed; a version
        #: that fails to load keeps the last good view (and is logged).
        self.watcher = RegistryWatcher(Path(path), lambda p: _access_view(p, environ), interval=reload_interval,
                                       on_error=_reload_refused)
        self.metrics = TenantMetrics(metrics_registry or prometheus_client.REGISTRY)
        self.in_flight: dict[str, int] = {}  # tenant id -> sequences in flight
        self.typical_seconds: dict[str, float] = {}  # tenant id -> moving average of its request durations
        secret = environ.get(SALT_SECRET_ENV)
        self._salt_key = secret.encode() if secret else secrets.token_bytes(32)
        self.salted_paths: frozenset[str] | None = None  # None: unknown, every tenant body is salted
        self._started = False

    def start(self, app: object) -> None:
        """Once, in the API server, before the first request: disable adapter selection by content-part type
        (raises ``GuardUnavailable`` if this vLLM's selection cannot be found) and derive the salted routes."""
        module = sys.modules.get(adapter_guard.SERVING_MODULE)
        if module is not None:
            adapter_guard.install(module)
        else:  # not imported yet (a stand-in app): guard it the moment vLLM's serving module loads
            when_imported(adapter_guard.SERVING_MODULE, adapter_guard.install)
        self.salted_paths = salted_paths(app)
        if self.salted_paths is not None:
            log.info("tenantserve: cache_salt set per tenant on %s", ", ".join(sorted(self.salted_paths)))
        self._started = True

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if not self._started and scope["type"] in ("lifespan", "http"):
            self.start(scope.get("app"))
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # websockets (/v1/realtime): not part of the tenant surface
            await send({"type": "websocket.close", "code": 1008})
            return
        started = time.perf_counter()
        route = classify(scope["method"], scope["path"])
        if route is Route.PUBLIC or _is_preflight(scope):
            # health probes answer even without a registry; a CORS preflight carries no credentials by design and
            # is answered by vLLM's CORSMiddleware (inside this one) without reaching any route
            return await self.app(scope, receive, send)
        caller: Caller | None = None
        model: str | None = None
        sequences = 1
        try:
            view = self.watcher.current()
            if view is None:  # fail closed: no version of the registry ever loaded
                raise RegistryUnavailable(f"the tenant registry {self.watcher.path} could not be loaded")
            if route is Route.IDENTITY:
                return await self._identity(view, scope, receive, send)
            caller = authorize(view, route, _token(scope), _client(scope))
            if route is Route.REDIRECT:
                return await _redirect(send, scope, canonical_path(scope["method"], scope["path"]) or "/")
            if route is Route.MODEL_CARD:
                model = model_card_id(scope["path"])
            if route is Route.INFERENCE and caller is not None:
                body = await _read_body(scope, receive, view.max_body_bytes)
                data = json_object(body)
                model = view.check_model(caller, data.get("model"))
                if caller is not ADMIN:
                    check_tenant_priority(data)
                    sequences = requested_sequences(data)
                    view.check_sequences(caller, sequences)
                    if self.salted_paths is None or scope["path"] in self.salted_paths:
                        check_client_salt(data)
                        data["cache_salt"] = self.salt(caller)
                # vLLM parses exactly the document checked here (no duplicate-key or depth games)
                body, scope = _reserialized(data, scope)
                receive = _replay(body, receive)
            self._acquire(view, caller, sequences)
        except AccessError as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            if route in (Route.INFERENCE, Route.MODELS, Route.MODEL_CARD) and caller is not ADMIN:
                self.metrics.requests.labels(_tenant_label(caller), OTHER_LABEL, str(exc.http_status)).inc()
            await _send_error(send, exc)
            return
        if caller is None or route is Route.ADMIN:
            return await self.app(scope, receive, send)
        if caller is ADMIN:  # operator traffic: served as vLLM serves it, counted in no per-tenant series
            return await self._serve(caller, model, route, scope, receive, send)
        await self._serve_tenant(view, caller, model, route, sequences, scope, receive, send, started)

    def salt(self, tenant: str) -> str:
        """The tenant's ``cache_salt``: HMAC-SHA256 of its id under the server secret (unguessable, stable for
        one launch), so the prefix cache is never shared across tenants."""
        return hmac.new(self._salt_key, tenant.encode(), hashlib.sha256).hexdigest()

    def _acquire(self, view: AccessView, caller: Caller | None, sequences: int) -> None:
        if caller is None or caller is ADMIN:
            return
        limit = view.limit_for(caller)
        current = self.in_flight.get(caller, 0)
        if limit is not None and current + sequences > limit:
            self.metrics.rate_limited.labels(caller).inc()
            raise RateLimited(f"too many sequences in flight for this key ({current} running, this request asks "
                              f"for {sequences}, limit {limit}); retry shortly",
                              retry_after=retry_after(self.typical_seconds.get(caller), current))
        self.in_flight[caller] = current + sequences

    async def _identity(self, view: AccessView, scope: Scope, receive: Any, send: Any) -> None:
        """``POST /tenantserve/identity {"nonce": <64 hex>}``: prove this engine holds the admin token, for the
        port this server listens on. Needs no credential (it proves the token, it never reveals it)."""
        token = self.environ.get(view.admin_token_env)
        if not token:
            raise IdentityUnavailable("the identity challenge is disabled: no admin token is configured")
        data = json_object(await _read_body(scope, receive, IDENTITY_MAX_BODY))
        nonce = data.get("nonce")
        if set(data) != {"nonce"} or not identity.valid_nonce(nonce):
            raise BadBody('send {"nonce": "<64 lowercase hex characters>"}')
        server = scope.get("server") or ("", 0)
        await _send_json(send, 200, {"proof": identity.proof(token, nonce, int(server[1] or 0))})

    async def _serve_tenant(self, view: AccessView, caller: str, model: str | None, route: Route, sequences: int,
                            scope: Scope, receive: Any, send: Any, started: float) -> None:
        model_label = bounded_label(model, view.allowed_models(caller))
        status = ["500"]
        gauge = self.metrics.in_flight.labels(caller)
        gauge.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self._serve(caller, model, route, scope, receive, send_wrapper, view.allowed_models(caller))
        finally:
            gauge.dec()
            self.in_flight[caller] -= sequences
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(caller, model_label, status[0]).inc()
            self.metrics.duration.labels(caller, model_label).observe(elapsed)
            if route is Route.INFERENCE:
                previous = self.typical_seconds.get(caller, elapsed)
                self.typical_seconds[caller] = previous + DURATION_EWMA_WEIGHT * (elapsed - previous)

    async def _serve(self, caller: Caller, model: str | None, route: Route, scope: Scope, receive: Any, send: Any,
                     allowed: frozenset[str] | None = None) -> None:
        """Hand the checked request to vLLM; ``allowed`` (a tenant's models) filters what it may see of the list."""
        if route is Route.MODEL_CARD:
            await _model_card(self.app, scope, receive, send, model or "", allowed)
        elif route is Route.MODELS and allowed is not None:
            await _filtered_models(self.app, scope, receive, send, allowed)
        elif route is Route.INFERENCE and caller is not ADMIN:
            await _not_found_as_ours(self.app, scope, receive, send, model)
        else:
            await self.app(scope, receive, send)


def _access_view(path: Path, environ: Mapping[str, str]) -> AccessView:
    """The access rules of the registry file (``RegistryError`` when it does not load)."""
    return AccessView.build(Registry.load(path, check_paths=False), environ)


def _reload_refused(exc: Exception) -> None:
    log.warning("tenantserve: registry not reloaded, keeping the last good version: %s", exc)


def _tenant_label(caller: Caller | None) -> str:
    """The ``tenant`` label of a refusal: the tenant, or ``anonymous`` before a key names one (never the admin,
    which is counted in no per-tenant series)."""
    return ANONYMOUS_LABEL if caller is None or caller is ADMIN else caller  # type: ignore[return-value]


def salted_paths(app: object) -> frozenset[str] | None:
    """Paths of the app's routes whose JSON body model has a ``cache_salt`` field (every generation route of this
    vLLM, however many it has), read from the FastAPI route table; None when ``app`` has no such table."""
    routes = getattr(app, "routes", None)
    if routes is None:
        return None
    found = set()
    for route in routes:
        dependant = getattr(route, "dependant", None)
        for param in getattr(dependant, "body_params", ()) or ():
            annotation = getattr(getattr(param, "field_info", None), "annotation", None)
            if any("cache_salt" in getattr(m, "model_fields", {}) for m in _union_members(annotation)):
                found.add(route.path)
    return frozenset(found)


def _union_members(annotation: object) -> list[object]:
    members, stack = [], [annotation]
    while stack:
        node = stack.pop()
        args = typing.get_args(node)
        if args and typing.get_origin(node) in (typing.Union, types.UnionType, typing.Annotated):
            stack.extend(args)
        else:
            members.append(node)
    return members


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _is_preflight(scope: Scope) -> bool:
    return (scope["method"] == "OPTIONS" and _header(scope, b"origin") is not None
            and _header(scope, b"access-control-request-method") is not None)


def _token(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth is not None:
        return bearer_token(auth)
    return _header(scope, b"x-api-key") or None  # the Anthropic-style /v1/messages clients


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def _read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadBody("client disconnected before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _reserialized(data: dict[str, Any], scope: Scope) -> tuple[bytes, Scope]:
    """The body vLLM gets: the checked document (salt included), with a matching content-length."""
    body = json.dumps(data).encode()
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    return body, {**scope, "headers": headers}


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that yields the buffered body once, then the client's later messages (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Any, exc: AccessError) -> None:
    await _send_json(send, exc.http_status, exc.to_body(), exc.headers)


async def _send_json(send: Any, status: int, payload: object, extra: Mapping[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Any, scope: Scope, path: str) -> None:
    """vLLM's (Starlette's) answer to a route spelled with a trailing slash: 307 to the canonical path, same
    method and body; the client's follow-up request then passes this middleware like any other."""
    query = scope.get("query_string", b"")
    location = scope.get("root_path", "") + path + ("?" + query.decode("latin-1") if query else "")
    await send({"type": "http.response.start", "status": 307,
                "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _vllm_models(app: Any, scope: Scope, receive: Any) -> tuple[Message, bytes]:
    """vLLM's own ``GET /v1/models`` answer (start message, body), whatever path the caller asked for."""
    start: Message = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app({**scope, "method": "GET", "path": MODELS_LIST, "raw_path": MODELS_LIST.encode()}, receive, capture)
    return start, b"".join(chunks)


def _visible_cards(body: bytes, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
    """The cards of vLLM's list the caller may see: a tenant's (``allowed``) with OpenAI's fields only (vLLM's
    ``root`` is a server path, ``parent`` names the base, ``permission`` is vLLM's own); the admin's whole."""
    cards = [card for card in json.loads(body).get("data", []) if isinstance(card, dict)]
    if allowed is None:
        return cards
    return [{k: card[k] for k in MODEL_CARD_FIELDS if k in card} for card in cards if card.get("id") in allowed]


async def _model_card(app: Any, scope: Scope, receive: Any, send: Any, model: str,
                      allowed: frozenset[str] | None) -> None:
    """``GET /v1/models/{id}``: the caller's card from vLLM's list, or the unknown-model 404 for a name the
    caller may not use or vLLM does not serve (the same bytes either way)."""
    start, body = await _vllm_models(app, scope, receive)
    if start.get("status") != 200:
        return await _send_raw(send, start, body)
    card = next((c for c in _visible_cards(body, allowed) if c.get("id") == model), None)
    if card is None:
        return await _send_error(send, ModelNotFound(model))
    await _send_json(send, 200, card)


async def _filtered_models(app: Any, scope: Scope, receive: Any, send: Any, allowed: frozenset[str]) -> None:
    """Run vLLM's ``/v1/models`` and keep only the cards the caller may use (``_visible_cards``)."""
    start, body = await _vllm_models(app, scope, receive)
    if start.get("status") == 200:
        body = json.dumps({"object": json.loads(body).get("object", "list"),
                           "data": _visible_cards(body, allowed)}).encode()
    await _send_raw(send, start, body)


async def _send_raw(send: Any, start: Message, body: bytes) -> None:
    """Send a captured response again with ``body`` (its content-length fixed)."""
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _not_found_as_ours(app: Any, scope: Scope, receive: Any, send: Any, model: str | None) -> None:
    """Pass the response through, except vLLM's own model-not-found 404 (a model in the registry that the engine
    does not serve right now): its text names the base ("Valid aliases"), so it becomes the middleware's
    ``ModelNotFound``, the same bytes as for any unknown model. Streams and other statuses pass untouched."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def rewrite(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] == 404:
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if _is_model_not_found(body):
            return await _send_error(send, ModelNotFound(model))
        headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
        await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    await app(scope, receive, rewrite)


def _is_model_not_found(body: bytes) -> bool:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return False
    if not isinstance(error, dict):
        return False
    return error.get("param") == "model" or "model" in str(error.get("message", "")).lower()
