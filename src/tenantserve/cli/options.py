"""Options shared by several commands, with defaults from ``Settings`` (``TENANTSERVE_*`` environment)."""

from __future__ import annotations

from pathlib import Path

import click

from tenantserve.settings import Settings

_defaults = Settings()

registry_option = click.option(
    "--registry",
    "registry_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=_defaults.registry,
    show_default=True,
    help="Tenant registry file (env TENANTSERVE_REGISTRY).",
)
host_option = click.option(
    "--host", default=_defaults.host, show_default=True, help="Address the OpenAI API binds to (env TENANTSERVE_HOST)."
)
port_option = click.option(
    "--port", type=click.IntRange(1, 65535), default=_defaults.port, show_default=True,
    help="Port of the OpenAI API (env TENANTSERVE_PORT).",
)
