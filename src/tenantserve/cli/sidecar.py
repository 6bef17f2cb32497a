"""``tenantserve sidecar``: the admin API and reconciler next to a running engine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tenantserve.cli.options import registry_option
from tenantserve.settings import Settings
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.server import run

_defaults = Settings()

engine_url_option = click.option("--engine-url", default=_defaults.engine_url, show_default=True,
                                  help="The vLLM API server (env TENANTSERVE_ENGINE_URL).")
adapters_root_option = click.option(
    "--adapters-root", type=click.Path(path_type=Path, file_okay=False), default=_defaults.adapters_root,
    show_default=True,
    help="Runtime onboarding reads tenant T's adapters only from ADAPTERS_ROOT/T/ (relative to the working "
    "directory; env TENANTSERVE_ADAPTERS_ROOT). Paths in `adapters add` are relative to ADAPTERS_ROOT/T.",
)
insecure_option = click.option("--insecure-dev-no-auth", "insecure", is_flag=True,
                               help="Development only: run the admin API without TENANTSERVE_ADMIN_TOKEN.")


@click.command("sidecar")
@registry_option
@engine_url_option
@click.option("--host", default=_defaults.sidecar_host, show_default=True, help="Address of the admin API.")
@click.option("--port", type=click.IntRange(1, 65535), default=_defaults.sidecar_port, show_default=True)
@adapters_root_option
@insecure_option
def command(registry_path: Path, engine_url: str, host: str, port: int, adapters_root: Path,
            insecure: bool) -> None:
    """Serve the admin API (docs at /docs) and keep the engine converged to the registry.

    Onboarding and offboarding go through vLLM's runtime load/unload and are persisted in the registry; after an
    engine restart or a hand edit of the registry, the reconciler loads what is missing and unloads what is not
    registered. Refuses to start without TENANTSERVE_ADMIN_TOKEN (exit 2) unless --insecure-dev-no-auth.
    """
    config = SidecarConfig.from_settings(Settings(), insecure=insecure, registry_path=registry_path,
                                         engine_url=engine_url.rstrip("/"),
                                         adapters_root=adapters_root.absolute())
    sys.exit(run(config, host=host, port=port))
