"""``tenantserve keys create|list|revoke``: tenant API keys, on the registry file directly, through the one update
path (``registry.update.update_registry``: file lock, re-validation, atomic write), so a sidecar writing at the same
moment loses nothing.

A running engine's middleware re-reads the registry within about a second, so a new or revoked key applies without
a restart. The sidecar's ``/admin/tenants/{id}/keys`` does the same through the same functions (tenantserve.registry.keys).
"""

from __future__ import annotations

from pathlib import Path

import click

from tenantserve.cli.options import registry_option
from tenantserve.registry.keys import find_tenant, issue_key, list_keys, revoke_key
from tenantserve.registry.schema import ApiKeySpec, Registry
from tenantserve.registry.update import update_registry

tenant_option = click.option("--tenant", "tenant_id", required=True, help="Tenant id, as in the registry.")


@click.group("keys")
def command() -> None:
    """Create, list and revoke tenant API keys (stored as SHA-256 hashes; a key is shown once)."""


@command.command("create")
@tenant_option
@registry_option
def create(tenant_id: str, registry_path: Path) -> None:
    """Issue a new key for a tenant and print it (stdout, once). Older keys stay valid: rotate, then revoke."""
    def change(registry: Registry) -> tuple[str, ApiKeySpec, bool]:
        tenant = find_tenant(registry, tenant_id)
        key = issue_key(tenant)
        return key, tenant.api_keys[-1], registry.security.auth

    key, spec, auth = update_registry(registry_path, change)
    click.echo(f"tenantserve: created {spec.id} for tenant {tenant_id}; the key is shown only now:", err=True)
    if not auth:
        click.echo("tenantserve: warning: security.auth is off in this registry: keys are not checked", err=True)
    click.echo(key)


@command.command("list")
@tenant_option
@registry_option
def list_(tenant_id: str, registry_path: Path) -> None:
    """List a tenant's keys: id, creation time, status. Never the key itself (it is not stored)."""
    tenant = find_tenant(Registry.load(registry_path, check_paths=False), tenant_id)
    for spec in list_keys(tenant):
        status = "revoked" if spec.revoked else "active"
        click.echo(f"{spec.id}  {spec.created.isoformat(timespec='seconds')}  {status}")


@command.command("revoke")
@tenant_option
@click.argument("key_id")
@registry_option
def revoke(tenant_id: str, key_id: str, registry_path: Path) -> None:
    """Revoke one key (KEY_ID from `keys list`); requests with it are refused within about a second."""
    update_registry(registry_path, lambda registry: revoke_key(find_tenant(registry, tenant_id), key_id))
    click.echo(f"tenantserve: revoked {key_id} of tenant {tenant_id}", err=True)

