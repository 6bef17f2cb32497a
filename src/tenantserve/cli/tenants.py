"""``tenantserve tenants list|add|remove``: manage tenants through a running sidecar."""

from __future__ import annotations

from urllib.parse import quote

import click
from rich.console import Console
from rich.table import Table

from tenantserve.cli.adapters import warn_registry_error
from tenantserve.cli.opsclient import AdminClient, url_option


@click.group("tenants")
def command() -> None:
    """Tenants on a running engine, through the sidecar's admin API (token: TENANTSERVE_ADMIN_TOKEN)."""


@command.command("list")
@url_option
def list_(url: str) -> None:
    """Every tenant with its adapters."""
    client = AdminClient(url)
    rows = client.call("GET", "/admin/tenants")
    warn_registry_error(client)
    table = Table("tenant", "base allowed", "adapters")
    for t in rows:
        table.add_row(t["id"], "yes" if t["allow_base"] else "no", ", ".join(t["adapters"]) or "-")
    Console().print(table)


@command.command("add")
@url_option
@click.argument("tenant_id")
@click.option("--no-base", is_flag=True, help="The tenant may use only its own adapters, not the plain base.")
def add(url: str, tenant_id: str, no_base: bool) -> None:
    """Register a tenant (repeating the same call changes nothing)."""
    status, _ = AdminClient(url).request("POST", "/admin/tenants", {"id": tenant_id, "allow_base": not no_base})
    click.echo(f"tenant {tenant_id}: " + ("registered" if status == 201 else "already registered, unchanged"))


@command.command("remove")
@url_option
@click.argument("tenant_id")
def remove(url: str, tenant_id: str) -> None:
    """Offboard a tenant: each adapter is drained and unloaded, then the tenant leaves the registry.
    Like `add`, repeating it changes nothing: a tenant that is not registered is reported, exit 0."""
    results = AdminClient(url).delete(f"/admin/tenants/{quote(tenant_id)}", missing="tenant_not_found")
    if results is None:
        click.echo(f"tenant {tenant_id}: not registered, nothing to remove")
        return
    for r in results:
        click.echo(f"adapter {r['name']}: unloaded, {'drained' if r['drained'] else 'drain timed out'}")
    click.echo(f"tenant {tenant_id}: removed")
