"""``tenantserve up``: launcher + sidecar on one machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tenantserve.cli.options import command_settings, host_option, port_option, registry_option, setting_option
from tenantserve.cli.sidecar import adapters_root_option, insecure_option
from tenantserve.engine.launch import plan_launch
from tenantserve.engine.process import check_port_free
from tenantserve.registry.schema import Registry
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.together import run_together


@click.command("up")
@registry_option
@host_option
@port_option
@setting_option("--sidecar-port", field="sidecar_port", type=click.IntRange(1, 65535),
                help="Port of the sidecar's admin API")
@adapters_root_option
@insecure_option
def command(registry_path: Path, host: str, port: int, sidecar_port: int, adapters_root: Path, insecure: bool) -> None:
    """Start the engine from the registry and the sidecar beside it; Ctrl-C stops both.

    The engine's log goes to .tenantserve/engine-PORT.log (TENANTSERVE_STATE_DIR; a fresh one per start, the
    previous one kept as engine-PORT.log.1). A port already taken by another program: exit 3 naming it, nothing
    started. One line says when both answer ("tenantserve: ready: ..." with the URLs); from then on
    `tenantserve tenants|adapters ...` find the admin API with no --url (a state file beside the registry, removed on
    exit). The admin API is on http://127.0.0.1:SIDECAR_PORT (docs at /docs).
    """
    settings = command_settings()
    registry = Registry.load(registry_path, check_paths=False)  # bad adapters fail alone
    engine_url = f"http://127.0.0.1:{port}"
    config = SidecarConfig.resolve(settings, registry.security, os.environ, insecure=insecure,
                                   registry_path=registry_path, engine_url=engine_url, adapters_root=adapters_root)
    check_port_free(host, port)  # exit 3 before anything starts: the sidecar must never talk to a squatter
    check_port_free(settings.sidecar_host, sidecar_port, what="the sidecar")
    plan = plan_launch(registry, host=host, port=port)
    for warning in plan.warnings:
        click.echo(f"tenantserve: warning: {warning}", err=True)
    for refusal in plan.refused:  # left out of the engine; the sidecar shows them as failed
        click.echo(f"tenantserve: {refusal.line()}", err=True)
    log_path = settings.state_dir / f"engine-{port}.log"  # one per port: two `up`s never share one
    click.echo(f"tenantserve: engine on {engine_url} (log: {log_path}), sidecar on "
               f"http://{settings.sidecar_host}:{sidecar_port}; Ctrl-C stops both", err=True)
    sys.exit(run_together(plan, config, engine_url=engine_url, host=settings.sidecar_host, port=sidecar_port,
                          log_path=log_path))
