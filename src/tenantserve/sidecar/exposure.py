"""Who may read the sidecar's /docs, /openapi.json and /metrics: the engine's policy, applied to the sidecar.

On loopback, anyone (the operator's own machine, a same-host Prometheus). Elsewhere, a bearer token: the admin token
for the API description (it maps every admin route), the metrics token (``TENANTSERVE_METRICS_TOKEN``) or the admin
token for /metrics. "Loopback" is the client address uvicorn reports: the TCP peer, or, when that peer is loopback,
its ``X-Forwarded-For`` (uvicorn's ``proxy_headers``), exactly as for the engine. /healthz stays open (probes).
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from tenantserve.bearer import bearer_token
from tenantserve.errors import Reason
from tenantserve.settings import ADMIN_TOKEN_ENV, METRICS_TOKEN_ENV
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.http import error_response

#: Guarded path -> which tokens open it off loopback.
GUARDED = {"/docs": "admin", "/docs/oauth2-redirect": "admin", "/redoc": "admin", "/openapi.json": "admin",
           "/metrics": "metrics"}


def is_loopback(host: str | None) -> bool:
    """Is ``host`` (an IP address as text, as uvicorn reports the client) a loopback address? Never raises."""
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_tokens(config: SidecarConfig, kind: str) -> list[str]:
    """The bearer tokens that open a guarded path of ``kind`` (``GUARDED``'s values) to a remote client."""
    tokens = [config.admin_token] if config.admin_token else []
    if kind == "metrics" and config.metrics_token:
        tokens.append(config.metrics_token)
    return tokens


class ExposureGuard:
    """ASGI middleware: refuse a guarded path to a remote client without one of its tokens (401, the error shape)."""

    def __init__(self, app: ASGIApp, *, config: SidecarConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = GUARDED.get(scope.get("path", "")) if scope["type"] == "http" else None
        client = scope.get("client")
        if kind is None or is_loopback(client[0] if client else None):
            return await self.app(scope, receive, send)
        presented = _bearer(scope)
        which = ADMIN_TOKEN_ENV
        if kind == "metrics":
            which = f"{METRICS_TOKEN_ENV} or {which}"
        if presented is None:
            response = error_response(401, Reason.MISSING_TOKEN, f"{scope['path']} off loopback: send 'Authorization: "
                                      f"Bearer <{which}>'")
        elif not any(hmac.compare_digest(presented.encode(), t.encode()) for t in allowed_tokens(self.config, kind)):
            response = error_response(401, Reason.INVALID_TOKEN, f"{scope['path']}: invalid token (needs {which})")
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            return bearer_token(value.decode("latin-1"))
    return None
