"""``tenantserve launch``: registry -> checked ``vllm serve`` command -> the running engine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tenantserve.cli.options import host_option, port_option, registry_option
from tenantserve.launcher import plan_launch, run_foreground
from tenantserve.registry import Registry


@click.command("launch")
@registry_option
@host_option
@port_option
@click.option("--dry-run", is_flag=True, help="Check the registry and print the command; start nothing.")
def command(registry_path: Path, host: str, port: int, dry_run: bool) -> None:
    """Check the registry, then run `vllm serve --enable-lora` for it.

    Every adapter must have a readable adapter_config.json and a rank that fits max_lora_rank (derived from the
    adapters when the registry leaves it out), and max_cpu_loras must be >= max_loras. A violation exits with
    code 2 and one line naming the adapter; no engine is started. Signals (Ctrl-C, SIGTERM) go to the engine.
    """
    registry = Registry.load(registry_path)
    plan = plan_launch(registry, host=host, port=port)
    for warning in plan.warnings:
        click.echo(f"tenantserve: warning: {warning}", err=True)
    if dry_run:
        click.echo(plan.shell())
        return
    click.echo(f"tenantserve: starting vLLM on http://{host}:{port} "
               f"(max_loras={plan.knobs.max_loras}, max_lora_rank={plan.knobs.max_lora_rank})", err=True)
    sys.exit(run_foreground(plan))
