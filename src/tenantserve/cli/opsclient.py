"""The operator CLI's HTTP calls to the sidecar: one place that turns answers into data or a typed error."""

from __future__ import annotations

import os
from typing import Any

import click
import httpx

from tenantserve.bearer import bearer_header
from tenantserve.cli.options import SettingsOption, command_settings
from tenantserve.engine.runstate import read_state
from tenantserve.errors import Reason, TenantserveError
from tenantserve.settings import ADMIN_TOKEN_ENV, Settings, token_from


class SidecarCallError(TenantserveError):
    """The sidecar refused the call (exit 2) or could not do it (exit 3); ``code`` is the sidecar's reason."""


def default_sidecar_url(settings: Settings) -> str:
    """The sidecar `tenantserve up` started for the registry (its state file beside it), else
    http://TENANTSERVE_SIDECAR_HOST:TENANTSERVE_SIDECAR_PORT."""
    state = read_state(settings.registry)
    if state is not None:
        return state.sidecar_url
    return f"http://{settings.sidecar_host}:{settings.sidecar_port}"


url_option = click.option(
    "--url", cls=SettingsOption, default=lambda: default_sidecar_url(command_settings()),
    help="The sidecar's admin API. Default: the sidecar `tenantserve up` started for the registry "
    "(TENANTSERVE_REGISTRY; a state file beside it), else http://TENANTSERVE_SIDECAR_HOST:TENANTSERVE_SIDECAR_PORT.",
)


class AdminClient:
    """Synchronous client of the admin API; the token: ``token``, else $TENANTSERVE_ADMIN_TOKEN."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 180.0) -> None:
        if token is None:
            token = token_from(ADMIN_TOKEN_ENV, os.environ)
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=bearer_header(token), timeout=timeout)

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        """The answer's JSON; a ``SidecarCallError`` for any refusal (exit 2) or failure (exit 3)."""
        return self.request(method, path, body)[1]

    def delete(self, path: str, *, missing: str) -> Any | None:
        """DELETE ``path``; None when the sidecar answers with the code ``missing`` (nothing to remove: removing is
        as idempotent as adding), else the answer's JSON. Other refusals raise like ``call``."""
        try:
            return self.call("DELETE", path)
        except SidecarCallError as exc:
            if exc.code != missing:
                raise
            return None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        """(HTTP status, JSON) of a successful call; raises like ``call``."""
        try:
            resp = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            err = SidecarCallError(f"cannot reach the sidecar at {self.url}: {exc}", code=Reason.SIDECAR_UNREACHABLE)
            err.exit_code = 3
            raise err from None
        if resp.status_code < 400:
            return resp.status_code, (resp.json() if resp.content else None)
        try:
            error = resp.json()["error"]
            message, code = error["message"], error["code"]
        except (ValueError, KeyError, TypeError):
            message, code = resp.text[:200] or resp.reason_phrase, Reason.HTTP_ERROR
        err = SidecarCallError(f"{message} (HTTP {resp.status_code})", code=code)
        err.exit_code = 2 if resp.status_code < 500 else 3
        raise err

    def close(self) -> None:
        self._client.close()
