"""The ``tenantserve`` command: a thin layer of parse -> call -> print -> exit code over the Python API.

Errors raised inside as ``TenantserveError`` become one line on stderr and the error's exit code, never a traceback.
One module per command, named after it (``launch``, ``demo``, ``check``, ``fingerprint``, ``stamp``, ``sidecar``,
``up``, ``tenants``, ``adapters``, ``keys``, ``simulate``, ``plan``, ``verify``), each calling the package that does
the work (``engine/``, ``admission/``, ``sidecar/``, ``planning/``, ``demo/``, ``verify/``, ``registry/``).
``options`` holds the options several commands share; ``opsclient`` the operator commands' HTTP calls to a sidecar.
"""

from __future__ import annotations

import importlib

import click

from tenantserve import __version__
from tenantserve.errors import TenantserveError

#: Every command, by name; each lives in ``tenantserve.cli.<name>`` as ``command``.
COMMANDS = ("adapters", "check", "demo", "fingerprint", "keys", "launch", "plan", "sidecar", "simulate", "stamp",
            "tenants", "up", "verify")


class _Group(click.Group):
    """Commands are imported when they run (click's lazy-loading pattern): ``tenantserve keys create`` does not pay
    for the demo's OpenAI client or the sidecar's FastAPI app; ``--help`` imports them all to list them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return importlib.import_module(f"tenantserve.cli.{cmd_name}").command

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except TenantserveError as exc:
            click.echo(f"tenantserve: error [{exc.code}]: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tenantserve")
def main() -> None:
    """Multi-tenant LoRA serving on vLLM: one base model, many tenants' fine-tunes, one batch.

    \b
    Start here:
      tenantserve demo                 the lab, end to end, on the embedded model
      tenantserve launch --dry-run     show the vllm serve command built from the registry
      tenantserve launch               run the engine from the registry (configs/adapters.yaml)
    """

