"""``tenantserve simulate``: the slot cache under traffic shapes, before a tenant complains; checked against vLLM."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tenantserve.cli.options import registry_option
from tenantserve.errors import TenantserveError
from tenantserve.planning.simulate import Engine, Request, simulate_requests
from tenantserve.planning.trace import SHAPES, Traffic, dump_trace, generate, load_trace

#: Defaults per mode: the lab's question (40 tenants, 8 slots), or a small engine where adapters contend.
LAB = {"adapters": 40, "max_loras": 8, "max_num_seqs": 64, "rate": 0.1, "tokens": 64, "min_tokens": None,
       "steps": 5000}
AGAINST = {"adapters": 8, "max_loras": 2, "max_num_seqs": 4, "rate": 4.0, "tokens": 32, "min_tokens": 8, "steps": 8}


@click.command("simulate")
@click.option("--adapters", type=click.IntRange(1, 10_000), default=None,
              help="Registered adapters [default: 40; 8 with --against-engine].")
@click.option("--max-loras", type=click.IntRange(1, 256), default=None,
              help="Slots per engine [default: 8; 2 with --against-engine].")
@click.option("--max-cpu-loras", type=click.IntRange(1), default=None,
              help="Host cache size [default: --adapters; --against-engine always holds every adapter].")
@click.option("--max-num-seqs", type=click.IntRange(1), default=None,
              help="Batch size limit [default: 64; 4 with --against-engine].")
@click.option("--shape", "shapes", type=click.Choice(SHAPES), multiple=True,
              help="Traffic shape(s) [default: all three, side by side].")
@click.option("--zipf", type=click.FloatRange(0.0, 5.0), default=1.2, show_default=True,
              help="Skew of the 'skewed' shape: adapter k gets traffic ~ 1/k^zipf.")
@click.option("--rate", type=click.FloatRange(0.01, 1000), default=None,
              help="New requests per scheduler step [default: 0.1]; per wave with --against-engine [default: 4].")
@click.option("--tokens", type=click.IntRange(1, 100_000), default=None,
              help="Output tokens (= decode steps) per request, at most [default: 64; 32 with --against-engine].")
@click.option("--min-tokens", type=click.IntRange(1, 100_000), default=None,
              help="Output tokens per request, at least [default: --tokens; 8 with --against-engine].")
@click.option("--steps", type=click.IntRange(1, 1_000_000), default=None,
              help="Steps of arrivals [default: 5000]; waves with --against-engine [default: 8].")
@click.option("--seed", "seeds", type=int, multiple=True, help="Seed(s) [default: 0; 0 1 2 with --against-engine].")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Replay this JSON-lines trace instead of generated shapes (format: README, 'Traces').")
@click.option("--step-ms", type=click.FloatRange(0.1, 10_000), default=25.0, show_default=True,
              help="Length of one scheduler step, to turn a trace's arrival seconds into steps.")
@click.option("--record", "record_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write every generated trace to DIR/<shape>-<seed>.jsonl (the --trace format).")
@click.option("--against-engine", is_flag=True,
              help="Replay each trace on a real vLLM engine started from the registry and compare its counters.")
@registry_option
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also draw hit rate and deferred requests against max_loras for each shape (PNG).")
def command(adapters: int | None, max_loras: int | None, max_cpu_loras: int | None, max_num_seqs: int | None,
            shapes: tuple[str, ...], zipf: float, rate: float | None, tokens: int | None, min_tokens: int | None,
            steps: int | None, seeds: tuple[int, ...], trace_path: Path | None, step_ms: float,
            record_dir: Path | None, against_engine: bool, registry_path: Path, plot_path: Path | None) -> None:
    """Simulate vLLM's adapter slots (max_loras, LRU) and host cache (max_cpu_loras) under traffic shapes.

    \b
    skewed   a few tenants carry most traffic (Zipf): slots hold the hot ones, hit rate stays high
    uniform  every tenant equally busy at once: with adapters >> max_loras, slots thrash and requests defer
    burst    tenants take turns being busy: a small working set that moves
    Prints slot hits, misses, evictions, disk loads, defers and queue waits (in scheduler steps) per shape, with a
    verdict and its reason. --against-engine replays the same traces on vLLM and exits 1 unless they agree.
    """
    d = AGAINST if against_engine else LAB
    knobs = {"adapters": adapters, "max_loras": max_loras, "max_num_seqs": max_num_seqs, "rate": rate,
             "tokens": tokens, "min_tokens": min_tokens, "steps": steps}
    v = {k: d[k] if knobs[k] is None else knobs[k] for k in knobs}
    seeds = seeds or ((0, 1, 2) if against_engine else (0,))
    if v["min_tokens"] is not None and v["min_tokens"] > v["tokens"]:
        raise click.BadParameter(f"{v['min_tokens']} > --tokens {v['tokens']}", param_hint="'--min-tokens'")
    traces = _traces(v, shapes, zipf, seeds, trace_path, step_ms)
    if record_dir is not None:
        record_dir.mkdir(parents=True, exist_ok=True)
        for trace, requests in traces:
            dump_trace(requests, record_dir / f"{trace.replace('/', '-')}.jsonl", step_ms / 1000)
    console = Console(width=max(Console().width, 150))
    if against_engine:
        ok = _against_engine(console, registry_path, v, traces)
    else:
        try:
            engine = Engine(max_loras=v["max_loras"], max_cpu_loras=max_cpu_loras or max(v["adapters"], v["max_loras"]),
                            max_num_seqs=v["max_num_seqs"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--max-cpu-loras'") from None
        _simulated(console, engine, v["adapters"], traces)
        ok = True
    if plot_path is not None:
        _plot(console, plot_path, v, zipf, seeds[0])
    if not ok:
        raise SystemExit(1)


def _traces(v: dict, shapes: tuple[str, ...], zipf: float, seeds: tuple[int, ...], trace_path: Path | None,
            step_ms: float) -> list[tuple[str, list[Request]]]:
    if trace_path is not None:
        return [(trace_path.name, load_trace(trace_path, step_ms / 1000))]
    out = []
    for shape in shapes or SHAPES:
        traffic = Traffic(adapters=v["adapters"], shape=shape, zipf_s=zipf, rate=v["rate"],  # type: ignore[arg-type]
                          tokens=v["tokens"], min_tokens=v["min_tokens"])
        for seed in seeds:
            out.append((f"{shape}/{seed}" if len(seeds) > 1 else shape, generate(traffic, v["steps"], seed)))
    return out


def _simulated(console: Console, engine: Engine, adapters: int, traces: list[tuple[str, list[Request]]]) -> None:
    table = Table("shape", "hit rate", "misses", "evictions", "disk loads", "defers", "deferred reqs",
                  "wait p50 (steps)", "wait p99 (steps)", "verdict",
                  title=f"{adapters} adapters on max_loras={engine.max_loras} (waits in scheduler steps)")
    reasons = []
    for trace, requests in traces:
        r = simulate_requests(requests, engine)
        verdict, why = r.judge()
        reasons.append(f"  {trace}: {verdict}: {why}")
        table.add_row(trace, f"{r.hit_rate:.3f}", str(sum(r.misses.values())), str(r.evictions), str(r.disk_loads),
                      str(sum(r.defers.values())), f"{len(r.deferred_requests)}/{r.requests}",
                      f"{r.wait_quantile(0.5):.0f}", f"{r.wait_quantile(0.99):.0f}", verdict)
    console.print(table)
    console.print("Why:\n" + "\n".join(reasons), highlight=False)
    console.print("Verdicts: comfortable = <= 1% of requests deferred and >= 95% slot hits; melting = >= 25% "
                  "deferred. Monitor the same figures live: tenantserve_lora_slot_hits_total / misses / defers.")


def _against_engine(console: Console, registry_path: Path, v: dict,
                    traces: list[tuple[str, list[Request]]]) -> bool:
    from tenantserve.planning.replay import HIT_RATE_POINTS, RELATIVE, EngineRun, against_engine
    from tenantserve.registry.schema import Registry

    run = EngineRun(adapters=v["adapters"], max_loras=v["max_loras"], max_num_seqs=v["max_num_seqs"])
    source = Registry.load(registry_path)
    console.print(f"Starting vLLM from {registry_path}: {run.adapters} adapters on max_loras={run.max_loras}, "
                  f"max_num_seqs={run.max_num_seqs} (30-45 s, more on a busy machine) ...")
    table = Table("trace", "requests", "hit rate eng/sim", "hits eng/sim", "misses eng/sim", "evictions eng/sim",
                  "defers eng/sim", "deferred reqs eng/sim", "agrees",
                  title=f"engine vs simulator ({run.adapters} adapters, max_loras={run.max_loras}; waves, see README)")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="tenantserve-simulate-") as tmp:
        try:
            for (_, requests), c in zip(traces, against_engine(source, run, traces, Path(tmp)), strict=False):
                e, s = c.engine, c.simulated
                problems = c.problems()
                failures += bool(problems)
                table.add_row(c.trace, str(len(requests)), f"{e.hit_rate:.3f} / {s.hit_rate:.3f}",
                              f"{e.hits} / {s.hits}", f"{e.misses} / {s.misses}", f"{e.evictions} / {s.evictions}",
                              f"{e.defers} / {s.defers}", f"{e.deferred_requests} / {s.deferred_requests}",
                              "yes" if not problems else "NO: " + "; ".join(problems))
        except TenantserveError:
            console.print(table)
            raise
    console.print(table)
    console.print(f"Agreement: hit rate within {HIT_RATE_POINTS * 100:.0f} points; evictions, defers (adapter-steps) "
                  f"and deferred requests within {RELATIVE:.0%} of the engine's count.")
    if failures:
        console.print(f"[bold red]{failures} of {len(traces)} traces disagree[/]")
    return not failures


def _plot(console: Console, path: Path, v: dict, zipf: float, seed: int) -> None:
    try:
        from tenantserve.planning.plot import plot_sweep, sweep
    except ImportError as exc:
        raise TenantserveError(f"--plot needs matplotlib ({exc}): pip install -e '.[dev]'") from None
    data = sweep(adapters=v["adapters"], zipf=zipf, rate=v["rate"], tokens=v["tokens"], min_tokens=v["min_tokens"],
                 steps=v["steps"], seed=seed, max_num_seqs=v["max_num_seqs"])
    in_flight = v["rate"] * ((v["min_tokens"] or v["tokens"]) + v["tokens"]) / 2
    plot_sweep(data, path, title=f"{v['adapters']} adapters, {v['rate']:g} new requests/step of {v['tokens']} "
                                 f"tokens (~{in_flight:.0f} in flight); simulated")
    console.print(f"Plot written to {path}")
