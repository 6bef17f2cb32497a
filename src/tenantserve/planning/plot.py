"""Hit rate and deferred requests against ``max_loras`` for each traffic shape: the lab's picture (matplotlib PNG)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tenantserve.planning.simulate import Engine, simulate_requests
from tenantserve.planning.trace import SHAPES, Traffic, generate

SLOT_COUNTS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 40)


@dataclass(frozen=True)
class Point:
    """One simulated run: a traffic shape at one ``max_loras``; rates are fractions in [0, 1]."""

    shape: str
    max_loras: int
    hit_rate: float
    deferred_fraction: float
    verdict: str


def sweep(*, adapters: int, zipf: float, rate: float, tokens: int, min_tokens: int | None, steps: int, seed: int,
          max_num_seqs: int, slot_counts: tuple[int, ...] = SLOT_COUNTS) -> list[Point]:
    """The simulator over every shape and slot count (host cache holds every adapter), one trace per shape."""
    points = []
    for shape in SHAPES:
        traffic = Traffic(adapters=adapters, shape=shape, zipf_s=zipf, rate=rate, tokens=tokens, min_tokens=min_tokens)
        requests = generate(traffic, steps, seed)
        for slots in (s for s in slot_counts if s <= adapters):
            r = simulate_requests(requests, Engine(max_loras=slots, max_cpu_loras=max(adapters, slots),
                                                      max_num_seqs=max_num_seqs))
            points.append(Point(shape, slots, r.hit_rate, r.deferred_fraction, r.verdict))
    return points


def plot_sweep(points: list[Point], path: Path, *, title: str) -> None:
    """Two panels sharing the x axis (max_loras): slot hit rate, and the share of requests ever deferred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6.5), dpi=110)
    for shape in SHAPES:
        mine = [p for p in points if p.shape == shape]
        xs = [p.max_loras for p in mine]
        top.plot(xs, [p.hit_rate * 100 for p in mine], marker="o", label=shape)
        bottom.plot(xs, [p.deferred_fraction * 100 for p in mine], marker="o", label=shape)
    top.axhline(95, color="grey", linestyle=":", linewidth=1)
    bottom.axhline(25, color="grey", linestyle=":", linewidth=1)
    bottom.axhline(1, color="grey", linestyle=":", linewidth=1)
    for ax in (top, bottom):
        ax.axvline(8, color="black", linewidth=0.8, alpha=0.4)
        ax.grid(alpha=0.3)
    top.set_ylabel("slot hit rate (%)")
    bottom.set_ylabel("requests deferred (%)")
    bottom.set_xlabel("max_loras (adapter slots per engine)")
    top.set_title(title)
    top.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
