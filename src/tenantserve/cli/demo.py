"""``tenantserve demo``: the lab on the embedded default model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from tenantserve.cli.options import command_settings, registry_option
from tenantserve.demo.run import Demo, demo_api_key, free_port
from tenantserve.registry.schema import Registry


@click.command("demo")
@registry_option
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port for the demo's engine; 0 picks a free one.")
def command(registry_path: Path, port: int) -> None:
    """Run the lab end to end: start vLLM from the registry, send a base request and an SQL-adapter request in
    one batch, swap their tags, overfill the adapter slots, print the memory bill, stop the engine.

    Exits 0 when the base says 'apple, banana, orange' and the SQL adapter says 'SELECT name FROM users;'.
    On a registry with security.auth on, the demo's client uses the admin token (env named by
    security.admin_token_env, default TENANTSERVE_ADMIN_TOKEN); without it, exit 2 and one line saying so.
    """
    settings = command_settings()
    registry = Registry.load(registry_path)
    api_key = demo_api_key(registry, os.environ)
    demo = Demo(
        registry,
        console=Console(),
        port=port or free_port(),
        log_path=settings.state_dir / "demo-engine.log",
        timeout=settings.ready_timeout,
        api_key=api_key,
    )
    sys.exit(0 if demo.run() else 1)
