"""Request and response bodies of the admin API (pydantic: malformed bodies are 422 before any handler runs)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tenantserve.registry.schema import NAME_PATTERN, TENANT_PATTERN, check_adapter_name, check_tenant_id


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Body):
    id: Annotated[str, AfterValidator(check_tenant_id)] = Field(
        pattern=TENANT_PATTERN, description="Tenant id: lowercase letters, digits, '-'; not admin/anonymous/other.")
    allow_base: bool = Field(default=True, description="May the tenant also use the plain base model?")


class AdapterCreate(_Body):
    name: Annotated[str, AfterValidator(check_adapter_name)] = Field(
        pattern=NAME_PATTERN, description="OpenAI model name, e.g. `acme-sql@v2`; not a reserved name (`text`, ...).")
    path: str = Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$",
                      description="Adapter directory, relative to the tenant's folder `<adapters root>/<tenant id>` "
                      "on the sidecar's host; an absolute path must lie inside that folder.")
    base_fingerprint: str | None = Field(default=None, description="Fingerprint of the base it was trained on.")
    allow_unverified_base: bool = Field(default=False, description="Serve it although it declares no base.")


class AdapterView(BaseModel):
    name: str
    tenant: str
    path: str
    state: str
    last_error: str | None = None
    error_code: str | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    attempts: int = 0


class TenantView(BaseModel):
    id: str
    allow_base: bool
    adapters: list[str]


class RegistryView(BaseModel):
    path: str
    valid: bool
    error: str | None = Field(default=None, description="Why the file is not used (path:line: key: message); the "
                              "sidecar and the engine keep the last good registry meanwhile.")


class OffboardView(BaseModel):
    name: str
    tenant: str
    unloaded: bool = Field(description="False when the engine did not serve it (already gone, or the engine is down).")
    drained: bool = Field(description="True when no request for it was still in flight when the call returned.")
    drain_seconds: float


class KeyIssued(BaseModel):
    tenant: str
    key_id: str
    key: str = Field(description="The plaintext API key. Shown once; only its hash is stored.")
