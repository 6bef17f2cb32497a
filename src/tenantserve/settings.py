"""One typed settings model: defaults, overridable by ``TENANTSERVE_*`` environment variables and CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TENANTSERVE_", extra="ignore")

    registry: Path = Field(
        default=Path("configs/adapters.yaml"), description="The tenant registry the engine and sidecar serve."
    )
    host: str = Field(default="127.0.0.1", description="Address the vLLM API server binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the vLLM API server (the OpenAI API).")
    sidecar_host: str = Field(default="127.0.0.1", description="Address the sidecar's admin API binds to.")
    sidecar_port: int = Field(default=8001, ge=1, le=65535, description="Port of the sidecar's admin API.")
    engine_url: str = Field(default="http://127.0.0.1:8000", description="Where the sidecar finds the engine.")
    admin_token: SecretStr | None = Field(default=None, description="Bearer token for admin routes.")
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token that may read the sidecar's /metrics from off loopback."
    )
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
