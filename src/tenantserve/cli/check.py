"""``tenantserve check``: every admission check over the whole registry, as a table; exit 0 only if all pass."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tenantserve.admission.report import CheckReport, check_registry
from tenantserve.cli.options import registry_option
from tenantserve.registry.schema import Registry

_STYLE = {"ok": "green", "warn": "yellow", "refused": "red"}


@click.command("check")
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(registry_path: Path, as_json: bool) -> None:
    """Check the base against its pin and every adapter against the base and the engine, without starting anything.

    Exit 0 when everything may be served, 1 otherwise (a missing adapter directory is a refused row,
    path_missing). Each refusal has a stable reason code (README: "Admission"). An invalid registry: exit 2.
    """
    report = check_registry(Registry.load(registry_path, check_paths=False))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report, Console(width=None if sys.stdout.isatty() else 200))
    sys.exit(0 if report.ok else 1)


def _print(report: CheckReport, console: Console) -> None:
    color = {"match": "green", "unpinned": "yellow"}.get(report.base_result, "red")
    console.print(f"base: [{color}]{report.base_result}[/] {report.base_message}", highlight=False, soft_wrap=True)
    table = Table("adapter", "tenant", "rank", "bytes", "base match", "verdict", "reason")
    for r in report.rows:
        reason = r.reason if r.code == "ok" else f"[{r.code}] {r.reason}"
        table.add_row(r.adapter, r.tenant, str(r.rank or "-"), f"{r.bytes:,}" if r.bytes is not None else "-",
                      r.base_match, f"[{_STYLE[r.verdict]}]{r.verdict}[/]", reason.replace("[", "\\["))
    console.print(table)
    refused = sum(r.verdict == "refused" for r in report.rows)
    console.print(f"{len(report.rows) - refused}/{len(report.rows)} adapters admitted (max_lora_rank "
                  f"{report.max_lora_rank}); {'OK' if report.ok else 'FAILED'}", highlight=False)
    for warning in report.warnings:  # not failures: the exit code ignores them
        console.print(f"[yellow]warning:[/] {warning}".replace("`", ""), highlight=False, soft_wrap=True)
