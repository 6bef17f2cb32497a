"""``tenantserve adapters list|add|remove``: onboard and offboard LoRA adapters on a running engine."""

from __future__ import annotations

from urllib.parse import quote

import click
from rich.console import Console
from rich.table import Table

from tenantserve.cli.opsclient import AdminClient, url_option


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def warn_registry_error(client: AdminClient) -> None:
    """One line above a list while the registry file is broken (the services keep serving the last good one)."""
    status = client.call("GET", "/admin/registry")
    if not status.get("valid", True):
        click.echo(f"tenantserve: warning [registry_invalid]: {status.get('error')} (the engine and the sidecar "
                   "keep the last good registry; fix the file)", err=True)


@click.group("adapters")
def command() -> None:
    """Adapters on a running engine, through the sidecar's admin API (token: TENANTSERVE_ADMIN_TOKEN)."""


@command.command("list")
@url_option
def list_(url: str) -> None:
    """Every registered adapter with its state (desired, loading, loaded, failed)."""
    client = AdminClient(url)
    rows = client.call("GET", "/admin/adapters")
    warn_registry_error(client)
    table = Table("adapter", "tenant", "state", "load", "warm-up", "last error")
    for a in rows:
        error = f"[{a['error_code']}] {a['last_error']}" if a.get("last_error") else ""
        table.add_row(a["name"], a["tenant"], a["state"], _ms(a["load_seconds"]), _ms(a["warmup_seconds"]), error)
    Console().print(table)


@command.command("add")
@url_option
@click.argument("tenant_id")
@click.argument("name")
@click.argument("path")
@click.option("--base-fingerprint", default=None, help="Fingerprint of the base the adapter was trained on "
              "(`tenantserve fingerprint` prints the served base's).")
@click.option("--allow-unverified-base", is_flag=True,
              help="Serve it although neither the adapter folder (tenantserve-base.json, `tenantserve stamp`) nor "
              "--base-fingerprint declares its base.")
def add(url: str, tenant_id: str, name: str, path: str, base_fingerprint: str | None,
        allow_unverified_base: bool) -> None:
    """Onboard adapter NAME at PATH for TENANT_ID; returns once it answers requests (no engine restart).

    PATH is on the sidecar's host, relative to the tenant's folder ADAPTERS_ROOT/TENANT_ID (the sidecar's
    --adapters-root); an absolute PATH must lie inside that folder. Nothing in it may link outside the folder.
    """
    body = {"name": name, "path": path, "base_fingerprint": base_fingerprint,
            "allow_unverified_base": allow_unverified_base}
    a = AdminClient(url).call("POST", f"/admin/tenants/{quote(tenant_id)}/adapters", body)
    click.echo(f"adapter {a['name']} (tenant {a['tenant']}): {a['state']}, "
               f"load {_ms(a['load_seconds'])}, warm-up {_ms(a['warmup_seconds'])}")


@command.command("remove")
@url_option
@click.argument("tenant_id")
@click.argument("name")
def remove(url: str, tenant_id: str, name: str) -> None:
    """Offboard: new requests for NAME are refused at once, requests in flight finish, then it leaves the registry.
    Like `add`, repeating it changes nothing: an adapter that is not registered is reported, exit 0."""
    r = AdminClient(url).delete(f"/admin/tenants/{quote(tenant_id)}/adapters/{quote(name, safe='@')}",
                                missing="adapter_not_found")
    if r is None:
        click.echo(f"adapter {name} (tenant {tenant_id}): not registered, nothing to remove")
        return
    drained = "drained" if r["drained"] else "drain timed out (requests may still be finishing)"
    click.echo(f"adapter {name} (tenant {tenant_id}): removed, {drained} in {r['drain_seconds']:.2f} s")
