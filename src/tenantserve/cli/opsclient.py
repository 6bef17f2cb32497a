"""The operator CLI's HTTP calls to the sidecar: one place that turns answers into data or a typed error."""

from __future__ import annotations

from typing import Any

import click
import httpx

from tenantserve.errors import TenantserveError
from tenantserve.settings import Settings


class SidecarCallError(TenantserveError):
    """The sidecar refused the call (exit 2) or could not do it (exit 3); ``code`` is the sidecar's reason."""


def _defaults() -> Settings:
    return Settings()


url_option = click.option(
    "--url", default=lambda: f"http://{_defaults().sidecar_host}:{_defaults().sidecar_port}", show_default="sidecar",
    help="The sidecar's admin API (default from TENANTSERVE_SIDECAR_HOST/PORT).",
)


class AdminClient:
    """Synchronous client of the admin API; the token comes from TENANTSERVE_ADMIN_TOKEN."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 180.0) -> None:
        if token is None:
            secret = _defaults().admin_token
            token = secret.get_secret_value() if secret else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            resp = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            err = SidecarCallError(f"cannot reach the sidecar at {self.url}: {exc}", code="sidecar_unreachable")
            err.exit_code = 3
            raise err from None
        if resp.status_code < 400:
            return resp.json() if resp.content else None
        try:
            error = resp.json()["error"]
            message, code = error["message"], error["code"]
        except (ValueError, KeyError, TypeError):
            message, code = resp.text[:200] or resp.reason_phrase, "http_error"
        err = SidecarCallError(f"{message} (HTTP {resp.status_code})", code=code)
        err.exit_code = 2 if resp.status_code < 500 else 3
        raise err

    def close(self) -> None:
        self._client.close()
