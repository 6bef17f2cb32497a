"""Options shared by several commands, with defaults from ``Settings`` (``TENANTSERVE_*`` environment).

``Settings`` is built once per command, when the command runs (``command_settings``: on the root click context),
never at import: a bad ``TENANTSERVE_*`` value is one line and exit 2, and ``--help`` shows the defaults the
environment gives now (``SettingsOption``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tenantserve.settings import Settings, env_name

_SETTINGS_KEY = "tenantserve.settings"


def command_settings(ctx: click.Context | None = None) -> Settings:
    """The running command's ``Settings``: read from the environment on first use, then kept on the root context
    (one build per command, shared by its option defaults and its body). Raises ``SettingsError`` (exit 2)."""
    root = (ctx or click.get_current_context()).find_root()
    settings = root.meta.get(_SETTINGS_KEY)
    if settings is None:
        settings = root.meta[_SETTINGS_KEY] = Settings.load()
    return settings  # type: ignore[no-any-return]


class SettingsOption(click.Option):
    """An option whose default comes from the command's ``Settings`` (or any callable), shown resolved in
    ``--help`` (``[default: configs/adapters.yaml]``), not as "(dynamic)"."""

    def get_help_record(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        dynamic, self.default = self.default, self.get_default(ctx, call=True)
        self.show_default = True
        try:
            return super().get_help_record(ctx)
        finally:
            self.default = dynamic


def from_settings(field: str) -> Callable[[], Any]:
    """A click default: the setting ``field`` of the running command's ``Settings``."""
    return lambda: getattr(command_settings(), field)


def setting_option(*decls: str, field: str, help: str, **kwargs: Any) -> Callable:
    """A ``SettingsOption`` defaulting to ``Settings.<field>``; its help names the variable (``env TENANTSERVE_X``)."""
    return click.option(*decls, cls=SettingsOption, default=from_settings(field),
                        help=f"{help} (env {env_name(field)}).", **kwargs)


registry_option = setting_option("--registry", "registry_path", field="registry",
                                 type=click.Path(path_type=Path, dir_okay=False), help="Tenant registry file")
host_option = setting_option("--host", field="host", help="Address the OpenAI API binds to")
port_option = setting_option("--port", field="port", type=click.IntRange(1, 65535), help="Port of the OpenAI API")
