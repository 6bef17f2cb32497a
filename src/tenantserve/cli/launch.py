"""``tenantserve launch``: registry -> checked ``vllm serve`` command -> the running engine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tenantserve.cli.options import host_option, port_option, registry_option
from tenantserve.engine.launch import INSECURE_FLAG, plan_launch, run_foreground
from tenantserve.engine.process import check_port_free
from tenantserve.registry.schema import Registry
from tenantserve.settings import INSECURE_ENV


@click.command("launch")
@registry_option
@host_option
@port_option
@click.option("--dry-run", is_flag=True, help="Check the registry and print the command; start nothing.")
@click.option("--strict", is_flag=True, help="All or nothing (CI): any refused adapter exits 2 and starts nothing.")
@click.option(INSECURE_FLAG, "insecure", is_flag=True, envvar=INSECURE_ENV,
              help=f"Serve a registry with security.auth false on a non-loopback --host anyway: vLLM's adapter "
                   f"load/unload routes are then open to the network (env {INSECURE_ENV}=1).")
def command(registry_path: Path, host: str, port: int, dry_run: bool, strict: bool, insecure: bool) -> None:
    """Check the registry, then run `vllm serve --enable-lora` for it.

    \b
    Every adapter is admitted against the base and the engine as configured (engine: and engine.extra_args).
    A refused adapter fails alone: the engine starts with every admissible one and each refused one is named on
    one line, `tenantserve: refused adapter 'x' (tenant t) [code]: ...` (--strict: exit 2, nothing starts).
    A base that fails its pin, an invalid registry, or security.auth false on a network address: exit 2.
    The engine dying on its own: exit 3. Signals (Ctrl-C, SIGTERM) go to the engine.
    """
    if not dry_run:
        check_port_free(host, port)  # exit 3, one line naming the port, before the (slow) admission of adapters
    registry = Registry.load(registry_path, check_paths=False)  # a missing adapter dir is that adapter's refusal
    plan = plan_launch(registry, host=host, port=port, strict=strict, allow_no_auth_on_network=insecure)
    for warning in plan.warnings:
        click.echo(f"tenantserve: warning: {warning}", err=True)
    for refusal in plan.refused:
        click.echo(f"tenantserve: {refusal.line()}", err=True)
    if dry_run:
        click.echo(plan.shell())
        return
    served = len(registry.adapters()) - len(plan.refused)
    click.echo(f"tenantserve: starting vLLM on http://{host}:{port} with {served} adapter(s) "
               f"(max_loras={plan.knobs.max_loras}, max_lora_rank={plan.knobs.max_lora_rank})", err=True)
    sys.exit(run_foreground(plan))
