"""Tenant API keys: issue, list, revoke, authenticate. Pure functions over registry models; no I/O.

A key is ``tsk-`` + 43 url-safe characters (256 random bits). Only its SHA-256 is stored: a slow password hash
buys nothing for keys with this much entropy, and SHA-256 keeps the per-request check in microseconds.
Callers (the CLI, the sidecar's admin API) load the registry, call these, and save it atomically.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from tenantserve.errors import Reason, TenantNotFound, TenantserveError
from tenantserve.registry.schema import ApiKeySpec, Registry, TenantSpec

KEY_PREFIX = "tsk-"


class KeyNotFound(TenantserveError):
    """No key with that id belongs to the tenant."""

    code = Reason.KEY_NOT_FOUND
    exit_code = 2
    http_status = 404


def key_digest(token: str) -> bytes:
    """SHA-256 of a presented key or token (its UTF-8, lone surrogates kept): the one digest every key and token is
    stored, indexed and compared by (``ApiKeySpec.sha256`` holds it in hex; the middleware's admin and metrics
    tokens too)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def hash_key(key: str) -> str:
    """Hex ``key_digest`` of a presented key, the form stored in ``ApiKeySpec.sha256``."""
    return key_digest(key).hex()


def new_key() -> tuple[str, str]:
    """A fresh (key id, plaintext key) pair."""
    return f"key-{secrets.token_hex(6)}", KEY_PREFIX + secrets.token_urlsafe(32)


def issue_key(tenant: TenantSpec, *, now: datetime | None = None) -> str:
    """Add a new hashed key to ``tenant`` and return the plaintext key: the only time it is ever visible."""
    taken = {k.id for k in tenant.api_keys}
    key_id, key = new_key()
    while key_id in taken:
        key_id, key = new_key()
    spec = ApiKeySpec(id=key_id, sha256=hash_key(key), created=now or datetime.now(UTC))
    tenant.api_keys = [*tenant.api_keys, spec]
    return key


def list_keys(tenant: TenantSpec) -> list[ApiKeySpec]:
    """The tenant's keys (revoked ones included, flagged), oldest first."""
    return sorted(tenant.api_keys, key=lambda k: k.created)


def revoke_key(tenant: TenantSpec, key_id: str) -> None:
    """Mark a key revoked; it is refused from the next registry reload on. Revoking twice is harmless."""
    for spec in tenant.api_keys:
        if spec.id == key_id:
            spec.revoked = True
            return
    raise KeyNotFound(f"tenant '{tenant.id}' has no key '{key_id}'")


def find_tenant(registry: Registry, tenant_id: str) -> TenantSpec:
    """The tenant with that id; ``TenantNotFound`` (404, exit 2) when the registry has none. The one lookup every
    caller that needs an existing tenant uses (the key commands, the admin API's tenant and key routes)."""
    tenant = registry.tenant(tenant_id)
    if tenant is None:
        raise TenantNotFound(tenant_id)
    return tenant


def authenticate(registry: Registry, presented_key: str) -> TenantSpec | None:
    """The tenant owning a live key, or None. Every stored hash is compared, in constant time, without early exit."""
    digest = key_digest(presented_key)
    found: TenantSpec | None = None
    for tenant in registry.tenants:
        for spec in tenant.api_keys:
            match = hmac.compare_digest(digest, bytes.fromhex(spec.sha256))
            if match and not spec.revoked and found is None:
                found = tenant
    return found


def key_index(registry: Registry) -> dict[bytes, str]:
    """Live key digest -> tenant id, for the middleware's per-request lookup (see ``lookup``)."""
    return {
        bytes.fromhex(spec.sha256): tenant.id
        for tenant in registry.tenants
        for spec in tenant.api_keys
        if not spec.revoked
    }


def lookup(index: dict[bytes, str], presented_key: str) -> str | None:
    """Tenant id for a presented key, in O(1). The dict is keyed by the SHA-256 of the key: how long a lookup
    takes depends only on the digest of what the caller sent, which tells an attacker nothing about stored keys
    (to steer it they would need SHA-256 preimages). ``authenticate`` is the scan-everything variant."""
    return index.get(key_digest(presented_key))
