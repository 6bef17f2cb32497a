"""``TenantMiddleware``: the ASGI class vLLM loads with ``--middleware tenantserve.middleware.TenantMiddleware``.

It is the outermost layer of vLLM's FastAPI app (no extra network hop). Per request: classify the route, find the
caller, and for tenant traffic read the JSON body (bounded), check the model against the tenant's ACL, take an
in-flight slot, then hand vLLM the same body. ``GET /v1/models`` is filtered to what the caller may use.
Decisions live in ``policy`` (pure); this module only moves bytes, counts, and turns ``AccessError`` into a response.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry

from tenantserve.middleware.errors import AccessError, BadBody, BodyTooLarge, RateLimited
from tenantserve.middleware.metrics import TenantMetrics
from tenantserve.middleware.policy import ADMIN, AccessView, Route, authorize, classify, label
from tenantserve.middleware.watch import RegistryWatcher

Scope = dict[str, Any]
Message = dict[str, Any]

REGISTRY_ENV = "TENANTSERVE_REGISTRY"
#: Generation routes that take vLLM's ``cache_salt``: the middleware sets it per tenant.
SALTED_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses"})


class TenantMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        registry_path: Path | str | None = None,
        environ: Mapping[str, str] | None = None,
        metrics_registry: CollectorRegistry | None = None,
        reload_interval: float = 1.0,
    ) -> None:
        environ = os.environ if environ is None else environ
        path = registry_path or environ.get(REGISTRY_ENV)
        if not path:
            raise RuntimeError(f"tenantserve middleware: set {REGISTRY_ENV} to the registry file")
        self.app = app
        self.watcher = RegistryWatcher(Path(path), environ=environ, interval=reload_interval)
        self.metrics = TenantMetrics(metrics_registry or prometheus_client.REGISTRY)
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
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
        caller: str | None = None
        model: str | None = None
        try:
            view = self.watcher.current()
            caller = authorize(view, route, _token(scope), _client(scope))
            if route is Route.INFERENCE and caller is not None:
                body = await _read_body(scope, receive, view.max_body_bytes)
                data = _json_object(body)
                model = view.check_model(caller, data.get("model"))
                if caller != ADMIN and scope["path"] in SALTED_ROUTES:
                    body, scope = _salted(data, caller, scope)
                receive = _replay(body, receive)
            self._acquire(view, caller)
        except AccessError as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            if route in (Route.INFERENCE, Route.MODELS):
                self.metrics.requests.labels(caller or "anonymous", "other", str(exc.http_status)).inc()
            await _send_error(send, exc)
            return
        if caller is None or route is Route.ADMIN:
            return await self.app(scope, receive, send)
        await self._serve_tenant(view, caller, model, route, scope, receive, send, started)

    def _acquire(self, view: AccessView, caller: str | None) -> None:
        if caller is None or caller == ADMIN:
            return
        limit = view.limit_for(caller)
        current = self.in_flight.get(caller, 0)
        if limit is not None and current >= limit:
            self.metrics.rate_limited.labels(caller).inc()
            raise RateLimited(f"too many requests in flight for this key (limit {limit}); retry shortly")
        self.in_flight[caller] = current + 1

    async def _serve_tenant(self, view: AccessView, caller: str, model: str | None, route: Route,
                            scope: Scope, receive: Any, send: Any, started: float) -> None:
        tenant = caller
        model_label = label(model, view.all_models, "other") if model else "other"
        status = ["500"]
        gauge = self.metrics.in_flight.labels(tenant)
        gauge.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            if route is Route.MODELS and caller != ADMIN:
                await _filtered_models(self.app, scope, receive, send_wrapper, view.allowed_models(caller))
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            gauge.dec()
            if caller != ADMIN:
                self.in_flight[caller] -= 1
            self.metrics.requests.labels(tenant, model_label, status[0]).inc()
            self.metrics.duration.labels(tenant, model_label).observe(time.perf_counter() - started)


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
        scheme, _, token = auth.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
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


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadBody("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadBody("request body must be a JSON object")
    return data


def _salted(data: dict[str, Any], tenant: str, scope: Scope) -> tuple[bytes, Scope]:
    """The body vLLM gets: ``cache_salt`` forced to the tenant's, so the prefix cache is never shared across
    tenants (a cache hit's speed-up would tell one tenant what another sent). Re-serializing also means vLLM
    parses exactly the document the ACL checked (no duplicate-key games)."""
    data["cache_salt"] = f"tenant-{tenant}"
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
    body = json.dumps(exc.to_body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _filtered_models(app: Any, scope: Scope, receive: Any, send: Any, allowed: frozenset[str]) -> None:
    """Run vLLM's ``/v1/models`` and keep only the cards the caller may use."""
    start: Message = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    body = b"".join(chunks)
    if start.get("status") == 200:
        data = json.loads(body)
        data["data"] = [card for card in data.get("data", []) if card.get("id") in allowed]
        body = json.dumps(data).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": start.get("status", 500), "headers": headers})
    await send({"type": "http.response.body", "body": body})
