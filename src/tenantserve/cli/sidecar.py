"""``tenantserve sidecar``: the admin API and reconciler next to a running engine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tenantserve.cli.options import command_settings, registry_option, setting_option
from tenantserve.registry.schema import Registry
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.server import run

engine_url_option = setting_option("--engine-url", field="engine_url", help="The vLLM API server")
adapters_root_option = setting_option(
    "--adapters-root", field="adapters_root", type=click.Path(path_type=Path, file_okay=False),
    help="Runtime onboarding reads tenant T's adapters only from ADAPTERS_ROOT/T/ (relative to the working "
    "directory). Paths in `adapters add` are relative to ADAPTERS_ROOT/T",
)
insecure_option = click.option("--insecure-dev-no-auth", "insecure", is_flag=True,
                               help="Development only: run the admin API without an admin token.")


@click.command("sidecar")
@registry_option
@engine_url_option
@setting_option("--host", field="sidecar_host", help="Address of the admin API")
@setting_option("--port", field="sidecar_port", type=click.IntRange(1, 65535), help="Port of the admin API")
@adapters_root_option
@insecure_option
def command(registry_path: Path, engine_url: str, host: str, port: int, adapters_root: Path,
            insecure: bool) -> None:
    """Serve the admin API (docs at /docs) and keep the engine converged to the registry.

    Onboarding and offboarding go through vLLM's runtime load/unload and are persisted in the registry; after an
    engine restart or a hand edit of the registry, the reconciler loads what is missing and unloads what is not
    registered. The admin token is read from the variable the registry's security.admin_token_env names (default
    TENANTSERVE_ADMIN_TOKEN); without it the sidecar refuses to start (exit 2) unless --insecure-dev-no-auth.
    """
    registry = Registry.load(registry_path, check_paths=False)  # exit 2 on a bad registry, before anything binds
    config = SidecarConfig.resolve(command_settings(), registry.security, os.environ, insecure=insecure,
                                   registry_path=registry_path, engine_url=engine_url,
                                   adapters_root=adapters_root)
    sys.exit(run(config, host=host, port=port))
