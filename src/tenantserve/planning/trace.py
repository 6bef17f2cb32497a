"""Request traces: generated from a traffic shape, or read from a JSON-lines file recorded from production logs.

The trace format (one JSON object per line; blank lines and lines starting with ``#`` are skipped)::

    {"t": 0.125, "adapter": "sql", "prompt_tokens": 24, "output_tokens": 16}
    {"t": 0.130, "adapter": null, "prompt_tokens": 80, "output_tokens": 200}

``t`` is the arrival in seconds from any origin (>= 0); ``adapter`` the OpenAI ``model`` the request used when it
was an adapter (``null`` or absent: the base); ``prompt_tokens`` / ``output_tokens`` the request's ``usage`` (>= 1).
Lines need not be sorted. ``load_trace`` turns seconds into scheduler steps with the decode step length.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tenantserve.errors import TenantserveError
from tenantserve.planning.simulate import Request

Shape = Literal["skewed", "uniform", "burst"]
SHAPES: tuple[Shape, ...] = ("skewed", "uniform", "burst")


class TraceError(TenantserveError):
    """A trace file that cannot be read: names the file, the line and what is wrong with it."""

    code = "trace_invalid"
    exit_code = 2
    http_status = 400


@dataclass(frozen=True)
class Traffic:
    """Who asks, how often. ``rate`` is new requests per step (per wave when replayed in waves); each request
    decodes between ``min_tokens`` (default: ``tokens``) and ``tokens`` tokens after a ``prompt_tokens`` prompt."""

    adapters: int = 40
    shape: Shape = "skewed"
    zipf_s: float = 1.2
    rate: float = 0.1
    tokens: int = 64
    min_tokens: int | None = None
    prompt_tokens: int = 16
    base_share: float = 0.0
    burst_len: int = 200
    burst_pool: int = 4

    def names(self) -> list[str]:
        """The generated adapters' names, ``a000`` ... (most requested first when skewed)."""
        return [f"a{i:03d}" for i in range(self.adapters)]


def adapter_weights(traffic: Traffic) -> list[float]:
    """skewed: adapter k gets traffic ~ 1/k^zipf_s; otherwise every adapter equally."""
    n = traffic.adapters
    if traffic.shape == "skewed":
        return [1.0 / (i + 1) ** traffic.zipf_s for i in range(n)]
    return [1.0] * n


def generate(traffic: Traffic, steps: int, seed: int = 0, names: Sequence[str] | None = None) -> list[Request]:
    """Requests arriving over ``steps`` steps: a Poisson-like count per step (``rate``), adapters by shape.
    burst: tenants take turns being busy, ``burst_pool`` adapters at a time for ``burst_len`` steps each."""
    rng = random.Random(seed)
    names = list(names) if names is not None else traffic.names()
    weights = adapter_weights(traffic)[: len(names)]
    low = traffic.min_tokens if traffic.min_tokens is not None else traffic.tokens
    out: list[Request] = []
    for step in range(steps):
        count = _poisson(rng, traffic.rate)
        if traffic.shape == "burst":
            window = (step // traffic.burst_len) * traffic.burst_pool
            pool = [names[(window + k) % len(names)] for k in range(min(len(names), traffic.burst_pool))]
            picks: list[str] = [rng.choice(pool) for _ in range(count)]
        else:
            picks = list(rng.choices(names, weights, k=count))
        for pick in picks:
            adapter = None if rng.random() < traffic.base_share else pick
            out.append(Request(step, adapter, traffic.prompt_tokens, rng.randint(min(low, traffic.tokens),
                                                                                 traffic.tokens)))
    return out


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method (means here are small); exact integer and fractional parts for large means."""
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def load_trace(path: Path, step_seconds: float) -> list[Request]:
    """Read a JSON-lines trace; arrivals become steps of ``step_seconds`` counted from the earliest request.

    Raises ``TraceError`` naming the line for unreadable files, bad JSON, missing or out-of-range fields."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read the trace ({exc.__class__.__name__}: {exc})") from None
    rows: list[tuple[float, str | None, int, int]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rows.append(_parse(line, f"{path}:{number}"))
    if not rows:
        raise TraceError(f"{path}: the trace has no requests")
    origin = min(r[0] for r in rows)
    return [Request(int((t - origin) / step_seconds + 1e-9), adapter, prompt, output)
            for t, adapter, prompt, output in rows]


def _parse(line: str, where: str) -> tuple[float, str | None, int, int]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected an object like "
                         '{"t": 0.5, "adapter": "sql", "prompt_tokens": 24, "output_tokens": 16}')
    t = obj.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
        raise TraceError(f"{where}: 't' must be a number of seconds >= 0, got {t!r}")
    adapter = obj.get("adapter")
    if adapter is not None and (not isinstance(adapter, str) or not adapter):
        raise TraceError(f"{where}: 'adapter' must be a non-empty string or null, got {adapter!r}")
    counts = []
    for key in ("prompt_tokens", "output_tokens"):
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TraceError(f"{where}: '{key}' must be an integer >= 1, got {value!r}")
        counts.append(value)
    return float(t), adapter, counts[0], counts[1]


def dump_trace(requests: Sequence[Request], path: Path, step_seconds: float) -> None:
    """Write requests in the trace format (arrival step x ``step_seconds``)."""
    with path.open("w", encoding="utf-8") as out:
        for r in requests:
            out.write(json.dumps({"t": round(r.arrival * step_seconds, 6), "adapter": r.adapter,
                                  "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens}) + "\n")
