"""``tenantserve simulate``: the slot cache under traffic shapes, before a tenant complains."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from tenantserve.simulate import Engine, Traffic, simulate


@click.command("simulate")
@click.option("--adapters", type=click.IntRange(1, 10_000), default=40, show_default=True, help="Registered adapters.")
@click.option("--max-loras", type=click.IntRange(1, 256), default=8, show_default=True, help="Slots per engine.")
@click.option("--max-cpu-loras", type=click.IntRange(1), default=None, help="Host cache size [default: --adapters].")
@click.option("--max-num-seqs", type=click.IntRange(1), default=64, show_default=True, help="Batch size limit.")
@click.option("--shape", "shapes", type=click.Choice(["skewed", "uniform", "burst"]), multiple=True,
              help="Traffic shape(s) to simulate [default: all three, side by side].")
@click.option("--zipf", type=click.FloatRange(0.0, 5.0), default=1.2, show_default=True,
              help="Skew of the 'skewed' shape: adapter k gets traffic ~ 1/k^zipf.")
@click.option("--rate", type=click.FloatRange(0.01, 1000), default=0.1, show_default=True,
              help="New requests per scheduler step.")
@click.option("--tokens", type=click.IntRange(1, 100_000), default=64, show_default=True,
              help="Decode steps per request.")
@click.option("--steps", type=click.IntRange(10, 1_000_000), default=5000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def command(adapters: int, max_loras: int, max_cpu_loras: int | None, max_num_seqs: int, shapes: tuple[str, ...],
            zipf: float, rate: float, tokens: int, steps: int, seed: int) -> None:
    """Simulate vLLM's adapter slots (max_loras, LRU) and host cache (max_cpu_loras) under traffic shapes.

    \b
    skewed   a few tenants carry most traffic (Zipf): slots hold the hot ones, hit rate stays high
    uniform  every tenant equally busy at once: with adapters >> max_loras, slots thrash and requests defer
    burst    tenants take turns being busy: a small working set that moves
    Prints slot hit rate, misses, evictions, disk loads, defers and queue wait (steps) per shape.
    """
    engine = Engine(max_loras=max_loras, max_cpu_loras=max_cpu_loras or adapters, max_num_seqs=max_num_seqs)
    table = Table("shape", "hit rate", "misses", "evictions", "disk loads", "defers", "deferred reqs",
                  "wait p50", "wait p99", "verdict", title=f"{adapters} adapters on max_loras={max_loras}")
    for shape in shapes or ("skewed", "uniform", "burst"):
        traffic = Traffic(adapters=adapters, shape=shape, zipf_s=zipf, rate=rate, tokens=tokens)  # type: ignore[arg-type]
        r = simulate(traffic, engine, steps=steps, seed=seed)
        table.add_row(shape, f"{r.hit_rate:.3f}", str(r.misses), str(r.evictions), str(r.disk_loads),
                      str(sum(r.defers.values())), f"{len(r.deferred_requests)}/{r.requests}",
                      f"{r.wait_quantile(0.5):.0f}", f"{r.wait_quantile(0.99):.0f}", r.verdict)
    Console(width=max(Console().width, 120)).print(table)
    click.echo("Monitor the same figures live: tenantserve_lora_slot_hits_total / misses / defers (README, Metrics).")
