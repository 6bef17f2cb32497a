"""What one sidecar needs to run, resolved from ``Settings`` and CLI flags before anything starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tenantserve.errors import Reason
from tenantserve.registry.schema import SecuritySpec
from tenantserve.settings import Settings, token_from
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
    def resolve(cls, settings: Settings, security: SecuritySpec, environ: Mapping[str, str], *,
                insecure: bool = False, registry_path: Path | None = None, engine_url: str | None = None,
                adapters_root: Path | None = None) -> SidecarConfig:
        """The sidecar's configuration: ``settings`` (the command's, built once), the flags that override them, and
        the tokens read from the variables the registry's ``security`` section names (``admin_token_env``,
        ``metrics_token_env``), exactly as the engine's middleware reads them.

        Raises ``ConfigError`` (``admin_token_missing``, exit 2) without an admin token unless ``insecure``."""
        token = token_from(security.admin_token_env, environ)
        if not token and not insecure:
            raise ConfigError(
                f"{security.admin_token_env} is not set (the registry's security.admin_token_env names it): the "
                "admin API refuses to start without a token (use --insecure-dev-no-auth only on a development "
                "machine)",
                code=Reason.ADMIN_TOKEN_MISSING,
            )
        return cls(
            registry_path=registry_path if registry_path is not None else settings.registry,
            engine_url=(engine_url if engine_url is not None else settings.engine_url).rstrip("/"),
            admin_token=token,
            insecure=insecure,
            reconcile_interval=settings.reconcile_interval,
            drain_timeout=settings.drain_timeout,
            adapters_root=(adapters_root if adapters_root is not None else settings.adapters_root).absolute(),
            metrics_token=token_from(security.metrics_token_env, environ),
        )
