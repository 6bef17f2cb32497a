"""What one sidecar needs to run, resolved from ``Settings`` and CLI flags before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tenantserve.settings import Settings
from tenantserve.sidecar.errors import ConfigError


@dataclass(frozen=True)
class SidecarConfig:
    registry_path: Path
    engine_url: str
    #: Bearer token for the admin API, also sent to the engine's load/unload routes. ``None`` only when insecure.
    admin_token: str | None
    insecure: bool = False
    reconcile_interval: float = 10.0
    #: How often the engine's /health is polled; a down->up transition triggers a reconcile at once.
    health_interval: float = 0.25
    #: How often the registry file's stat is compared (an operator's edit, a ConfigMap swap).
    watch_interval: float = 1.0
    drain_timeout: float = 30.0
    request_timeout: float = 120.0
    warmup_prompt: str = "Hello"
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    load_concurrency: int = 4
    #: Runtime onboarding reads adapters only from ``<adapters_root>/<tenant id>/...`` (``sidecar.ownership``).
    adapters_root: Path = Path("adapters")
    #: Token that may read /metrics from off loopback (besides the admin token).
    metrics_token: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, insecure: bool = False, **overrides: object) -> SidecarConfig:
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        if not token and not insecure:
            raise ConfigError(
                "TENANTSERVE_ADMIN_TOKEN is not set: the admin API refuses to start without a token "
                "(use --insecure-dev-no-auth only on a development machine)",
                code="admin_token_missing",
            )
        values: dict[str, object] = {
            "registry_path": settings.registry,
            "engine_url": settings.engine_url.rstrip("/"),
            "admin_token": token or None,
            "insecure": insecure,
            "reconcile_interval": settings.reconcile_interval,
            "drain_timeout": settings.drain_timeout,
            "adapters_root": settings.adapters_root.absolute(),
            "metrics_token": settings.metrics_token.get_secret_value() if settings.metrics_token else None,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
