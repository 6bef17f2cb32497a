"""Typed errors of the admin API. Each maps to one HTTP status; ``http.py`` turns any of them into the one error body
(``tenantserve.api_errors``)."""

from __future__ import annotations

from tenantserve.errors import Reason, TenantserveError
from tenantserve.registry.update import RegistryWriteError  # noqa: F401  (503; raised by the one update path)


class NotFound(TenantserveError):
    """An unknown adapter (an unknown tenant is ``tenantserve.errors.TenantNotFound``)."""

    code = Reason.NOT_FOUND
    http_status = 404


class Conflict(TenantserveError):
    """The name is taken by something different (a different path, another tenant)."""

    code = Reason.CONFLICT
    http_status = 409


class Unauthorized(TenantserveError):
    """Missing or wrong admin bearer token."""

    code = Reason.UNAUTHORIZED
    http_status = 401


class NotServable(TenantserveError):
    """The engine accepted the adapter but it did not become servable (not listed, or the warm-up failed)."""

    code = Reason.NOT_SERVABLE
    http_status = 502


class ConfigError(TenantserveError):
    """The sidecar cannot start as configured (no admin token, ...)."""

    code = Reason.SIDECAR_CONFIG
    exit_code = 2
