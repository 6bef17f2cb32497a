"""``tenantserve verify``: dedicated vs consolidated eval diff for one adapter (or the base), as a table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tenantserve.cli.options import command_settings, registry_option
from tenantserve.verify import VerifyReport, VerifyRequest, verify


@click.command("verify")
@click.option("--adapter", "model", required=True, help="Adapter to verify; the base's name verifies base requests.")
@registry_option
@click.option("--engine-url", default=None,
              help="A running engine (default: start one from the registry, stop it after).")
@click.option("--prompts", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON lines {\"prompt\": ..., \"max_tokens\": ...} "
                   "(default: verify/<adapter>.jsonl beside the registry).")
@click.option("--dedicated-base", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Base for the dedicated side: the one the adapter was trained on (default: the registry's).")
@click.option("--top-k", type=click.IntRange(1, 20), default=5, show_default=True,
              help="Logprobs per token on both sides (a divergence passes only inside each other's top-k).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              help="Largest |logprob difference| allowed on agreeing tokens, in nats (default 0.01 for a float32 "
                   "engine, 0.5 for 16-bit).")
@click.option("--lm-eval", "lm_eval_task", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also evaluate a local lm-evaluation-harness task file both ways (hf + peft vs local-completions "
                   "in mixed batches); every metric must be equal. Needs `pip install lm-eval`.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(model: str, registry_path: Path, engine_url: str | None, prompts: Path | None,
            dedicated_base: Path | None, top_k: int, tolerance: float | None, lm_eval_task: Path | None,
            as_json: bool) -> None:
    """Compare one tenant's outputs served dedicated (transformers + peft, the adapter alone, float32, greedy) with
    the same requests on the shared engine, in batches mixed with other tenants' adapters and base requests.

    Per prompt, vLLM's rule: greedy tokens equal up to the first divergence, where each side's token must be in the
    other's top-k; and the logprobs of agreeing tokens within the tolerance. Exit 0 all pass, 1 any fails, 2 bad
    input, 3 engine unreachable or not starting. With security.auth on, TENANTSERVE_ADMIN_TOKEN is used.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the dedicated side's weight-loading bars; our progress lines say enough
    settings = command_settings()
    err = Console(stderr=True, soft_wrap=True)
    request = VerifyRequest(model=model, registry_path=registry_path, engine_url=engine_url, prompts=prompts,
                            dedicated_base=dedicated_base, top_k=top_k, tolerance=tolerance, lm_eval_task=lm_eval_task,
                            engine_log=settings.state_dir / "verify-engine.log", ready_timeout=settings.ready_timeout)
    report = verify(request, progress=lambda line: err.print(escape(line), highlight=False))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report, Console(width=None if sys.stdout.isatty() else 200))
    sys.exit(0 if report.ok else 1)


def _print(report: VerifyReport, console: Console) -> None:
    table = Table("#", "prompt", "dedicated", "consolidated", "tokens", "max |Δlogprob|", "mixed with", "verdict",
                  title=f"verify '{report.model}': dedicated ({report.dedicated_base}) vs consolidated "
                        f"({report.engine_url})")
    for i, r in enumerate(report.rows, start=1):
        d = r.diff
        drift = "-" if d.max_logprob_diff is None else f"{d.max_logprob_diff:.2e}"
        tokens = f"{d.agreed}/{len(r.dedicated.token_ids)}"
        mixed = ", ".join(r.mixed_with) if r.mixed else f"[yellow]{', '.join(r.mixed_with) or 'none'} " \
                                                          f"(of {', '.join(r.companions) or 'none'})[/]"
        verdict = "[green]pass[/]" if d.passed else "[red]FAIL[/]"
        if d.reason:
            verdict += f" {escape(d.reason)}"
        table.add_row(str(i), escape(r.case.prompt), escape(r.dedicated.text), escape(r.consolidated.text), tokens,
                      drift, mixed, verdict)
    if report.rows:
        console.print(table)
    if report.lm_eval is not None:
        lm = report.lm_eval
        metrics = Table("metric", "dedicated (hf + peft)", "consolidated (engine)", "verdict",
                        title=f"lm-eval {lm.task}, consolidated mixed with {', '.join(lm.mixed_with) or 'none'} "
                              f"throughout (of {', '.join(lm.companions) or 'none'}; companions restarted "
                              f"{lm.companion_restarts} times)")
        for m in lm.rows:
            metrics.add_row(m.metric, f"{m.dedicated:.4f}", f"{m.consolidated:.4f}",
                            "[green]pass[/]" if m.passed else "[red]FAIL[/]")
        console.print(metrics)
    failed = sum(not r.diff.passed for r in report.rows)
    console.print(f"{len(report.rows) - failed}/{len(report.rows)} prompts pass (top-{report.top_k}, tolerance "
                  f"{report.tolerance:g}); {'OK' if report.ok else 'FAILED'}", highlight=False)
