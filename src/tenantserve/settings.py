"""One typed settings model: defaults, overridable by ``TENANTSERVE_*`` environment variables and CLI flags; and the
name of every environment variable tenantserve reads, each spelled once here (the README's "Environment" table lists
exactly these: tests/test_readme_env.py).

``Settings.load`` reads the environment when a command runs (never at import) and turns a bad value into one
``SettingsError`` line (exit 2). The admin and metrics tokens are not settings: the registry's ``security`` section
names their variables (``token_from``), for the sidecar, the middleware and the client commands alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tenantserve.errors import Reason, TenantserveError

#: The prefix of every setting's variable (``Settings.registry`` <- ``TENANTSERVE_REGISTRY``).
ENV_PREFIX = "TENANTSERVE_"

#: The tenant registry; the launcher also sets it for the engine's plugin and middleware.
REGISTRY_ENV = "TENANTSERVE_REGISTRY"
#: The default variables of the admin and metrics tokens (``security.admin_token_env`` / ``metrics_token_env``).
ADMIN_TOKEN_ENV = "TENANTSERVE_ADMIN_TOKEN"
METRICS_TOKEN_ENV = "TENANTSERVE_METRICS_TOKEN"
#: Cached file digests (``admission.fingerprint_cache``).
CACHE_DIR_ENV = "TENANTSERVE_CACHE_DIR"
#: The adapter store and its largest weights file (``admission.store``).
ADAPTER_STORE_ENV = "TENANTSERVE_ADAPTER_STORE"
ADAPTER_MAX_BYTES_ENV = "TENANTSERVE_ADAPTER_MAX_BYTES"
#: The server secret the middleware derives each tenant's prefix-cache salt from (the launcher draws one if unset).
CACHE_SALT_SECRET_ENV = "TENANTSERVE_CACHE_SALT_SECRET"
#: 1/true/yes: serve without tenant auth on a network address (``engine.launch.require_safe_bind``).
INSECURE_ENV = "TENANTSERVE_INSECURE_NO_AUTH_ON_NETWORK"
#: The vLLM plugin's CPU LoRA ops (``vllm_plugin.cpu_lora_fix``), for benchmarks.
CPU_LORA_OPS_ENV = "TENANTSERVE_CPU_LORA_OPS"

#: Variables read outside ``Settings`` (the engine side, the stores); ``Settings``' own are ``settings_env_names()``.
OTHER_ENV_NAMES = (REGISTRY_ENV, ADMIN_TOKEN_ENV, METRICS_TOKEN_ENV, CACHE_DIR_ENV, ADAPTER_STORE_ENV,
                   ADAPTER_MAX_BYTES_ENV, CACHE_SALT_SECRET_ENV, INSECURE_ENV, CPU_LORA_OPS_ENV)


class SettingsError(TenantserveError):
    """An environment variable holds a value its setting cannot take (exit 2)."""

    code = Reason.USAGE
    exit_code = 2


class Settings(BaseSettings):
    """What a command runs with when no flag says otherwise. Build it with ``load`` once per command."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    registry: Path = Field(
        default=Path("configs/adapters.yaml"), description="The tenant registry the engine and sidecar serve."
    )
    host: str = Field(default="127.0.0.1", description="Address the vLLM API server binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the vLLM API server (the OpenAI API).")
    sidecar_host: str = Field(default="127.0.0.1", description="Address the sidecar's admin API binds to.")
    sidecar_port: int = Field(default=8001, ge=1, le=65535, description="Port of the sidecar's admin API.")
    engine_url: str = Field(default="http://127.0.0.1:8000", description="Where the sidecar finds the engine.")
    adapters_root: Path = Field(
        default=Path("adapters"),
        description="Runtime onboarding reads tenant T's adapters only from ADAPTERS_ROOT/T/ (relative: to the "
        "working directory).",
    )
    state_dir: Path = Field(default=Path(".tenantserve"), description="Logs and runtime files of local runs.")
    ready_timeout: float = Field(default=300.0, gt=0, description="Seconds to wait for the engine to answer.")
    reconcile_interval: float = Field(
        default=10.0, gt=0, description="Seconds between the sidecar's periodic reconciles (registry vs engine)."
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, description="Seconds offboarding waits for an adapter's in-flight requests to finish."
    )

    @classmethod
    def load(cls) -> Settings:
        """Read the environment now. Raises ``SettingsError`` naming the variable and what is wrong with it."""
        try:
            return cls()
        except ValidationError as exc:
            first = exc.errors()[0]
            name = env_name(str(first["loc"][0])) if first.get("loc") else ENV_PREFIX + "*"
            raise SettingsError(f"environment: {name}={first.get('input')!r}: {first['msg']}") from None


def env_name(field: str) -> str:
    """The variable a setting is read from: ``env_name("sidecar_port") == "TENANTSERVE_SIDECAR_PORT"``. Pure."""
    return ENV_PREFIX + field.upper()


def settings_env_names() -> tuple[str, ...]:
    """The variables ``Settings`` reads, one per field."""
    return tuple(env_name(field) for field in Settings.model_fields)


def token_from(variable: str, environ: Mapping[str, str]) -> str | None:
    """The token in the variable the registry names (``security.admin_token_env`` or ``metrics_token_env``), read
    as the middleware reads it; None when it is unset or empty."""
    return environ.get(variable) or None
