"""Tenant API keys through the admin API: ``tenantserve.registry.keys`` does the hashing; this persists through the store."""

from __future__ import annotations

import asyncio

from tenantserve.registry import keys
from tenantserve.registry.schema import ApiKeySpec, Registry
from tenantserve.sidecar.metrics import SidecarMetrics
from tenantserve.sidecar.store import RegistryStore


class KeyService:
    """Tenant API keys through the admin API: issue, list, revoke, each counted in
    ``tenantserve_sidecar_operations_total``. Owns no state: every call goes through the ``RegistryStore`` (issue and
    revoke as one locked registry write). Raises ``TenantNotFound`` (404), ``KeyNotFound`` (404) and the store's
    write errors (503)."""

    def __init__(self, store: RegistryStore, metrics: SidecarMetrics) -> None:
        self.store, self.metrics = store, metrics

    async def issue(self, tenant_id: str) -> tuple[str, str]:
        """(key id, plaintext key); only the key's hash reaches the registry."""

        def change(registry: Registry) -> tuple[str, str]:
            tenant = keys.find_tenant(registry, tenant_id)
            key = keys.issue_key(tenant)
            return tenant.api_keys[-1].id, key

        return await self._counted("issue_key", change)

    async def revoke(self, tenant_id: str, key_id: str) -> None:
        await self._counted("revoke_key", lambda r: keys.revoke_key(keys.find_tenant(r, tenant_id), key_id))

    async def list(self, tenant_id: str) -> list[ApiKeySpec]:
        registry = await asyncio.to_thread(self.store.load)
        return keys.list_keys(keys.find_tenant(registry, tenant_id))

    async def _counted(self, operation: str, change):  # type: ignore[no-untyped-def]
        try:
            result = await self.store.mutate(change)
        except Exception:
            self.metrics.operations.labels(operation, "refused").inc()
            raise
        self.metrics.operations.labels(operation, "ok").inc()
        return result
