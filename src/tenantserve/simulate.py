"""The slot cache under a traffic shape: which shapes are comfortable and which melt it. Pure; no engine.

A step-level model of what vLLM 0.32 does with LoRA (VLLM_NOTES.md): each scheduler step admits waiting requests in
arrival order while the batch has room; a request whose adapter is not among the step's adapters when those already
fill ``max_loras`` is *deferred* (skipped this step). Adapters of the step are then activated: already in a slot is a
*hit*; otherwise a *miss*, which evicts the least recently used slot not needed by this step and loads the adapter
from the host cache (``max_cpu_loras``, LRU) or, failing that, from disk.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Literal

Shape = Literal["skewed", "uniform", "burst"]


@dataclass(frozen=True)
class Traffic:
    """Who asks, how often. ``rate`` is new requests per step; ``tokens`` is decode steps per request."""

    adapters: int = 40
    shape: Shape = "skewed"
    zipf_s: float = 1.2
    rate: float = 0.1
    tokens: int = 64
    base_share: float = 0.0
    burst_len: int = 200


@dataclass(frozen=True)
class Engine:
    max_loras: int = 8
    max_cpu_loras: int = 40
    max_num_seqs: int = 64


@dataclass
class Result:
    steps: int
    requests: int
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    disk_loads: int = 0
    cpu_cache_hits: int = 0
    defers: Counter[str] = field(default_factory=Counter)
    deferred_requests: set[int] = field(default_factory=set)
    waits: list[int] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 1.0

    def wait_quantile(self, q: float) -> float:
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    @property
    def deferred_fraction(self) -> float:
        return len(self.deferred_requests) / self.requests if self.requests else 0.0

    @property
    def verdict(self) -> str:
        """comfortable: <= 1% of requests ever wait for a slot; melting: >= 25% do; strained in between."""
        if self.deferred_fraction <= 0.01 and self.hit_rate >= 0.95:
            return "comfortable"
        if self.deferred_fraction >= 0.25:
            return "melting"
        return "strained"


def adapter_weights(traffic: Traffic) -> list[float]:
    n = traffic.adapters
    if traffic.shape == "skewed":
        return [1.0 / (i + 1) ** traffic.zipf_s for i in range(n)]
    return [1.0] * n


def arrivals(traffic: Traffic, steps: int, rng: random.Random) -> list[list[str | None]]:
    """Per step, the adapters (None = the base) of the requests that arrive."""
    weights = adapter_weights(traffic)
    names = [f"a{i:03d}" for i in range(traffic.adapters)]
    out: list[list[str | None]] = []
    for step in range(steps):
        count = int(traffic.rate) + (1 if rng.random() < traffic.rate % 1 else 0)
        if traffic.shape == "burst":  # tenants take turns being busy: a rolling window of 2*max_loras-ish adapters
            window = (step // traffic.burst_len) % max(1, traffic.adapters)
            pool = [names[(window + k) % traffic.adapters] for k in range(min(traffic.adapters, 4))]
            picks: list[str | None] = [rng.choice(pool) for _ in range(count)]
        else:
            picks = list(rng.choices(names, weights, k=count))
        out.append([None if rng.random() < traffic.base_share else p for p in picks])
    return out


def simulate(traffic: Traffic, engine: Engine, *, steps: int = 5000, seed: int = 0) -> Result:
    rng = random.Random(seed)
    incoming = arrivals(traffic, steps, rng)
    slots: OrderedDict[str, None] = OrderedDict()
    host: OrderedDict[str, None] = OrderedDict()
    waiting: list[tuple[int, int, str | None]] = []  # (request id, arrival step, adapter)
    running: dict[int, tuple[str | None, int]] = {}  # request id -> (adapter, tokens left)
    result = Result(steps=steps, requests=sum(map(len, incoming)))
    next_id = 0
    for step in range(steps):
        for adapter in incoming[step]:
            waiting.append((next_id, step, adapter))
            next_id += 1
        step_adapters = {a for a, _ in running.values() if a is not None}
        still_waiting = []
        for rid, arrived, adapter in waiting:
            if len(running) >= engine.max_num_seqs:
                still_waiting.append((rid, arrived, adapter))
                continue
            if adapter is not None and adapter not in step_adapters and len(step_adapters) >= engine.max_loras:
                result.defers[adapter] += 1
                result.deferred_requests.add(rid)
                still_waiting.append((rid, arrived, adapter))
                continue
            if adapter is not None:
                step_adapters.add(adapter)
            running[rid] = (adapter, traffic.tokens)
            result.waits.append(step - arrived)
        waiting = still_waiting
        _activate(step_adapters, slots, host, engine, result)
        for rid in list(running):
            adapter, left = running[rid]
            running[rid] = (adapter, left - 1)
            if left <= 1:
                del running[rid]
    return result


def _activate(needed: set[str], slots: OrderedDict[str, None], host: OrderedDict[str, None], engine: Engine,
              result: Result) -> None:
    for adapter in sorted(needed):
        if adapter in slots:
            result.hits += 1
            slots.move_to_end(adapter)
            continue
        result.misses += 1
        if adapter in host:
            result.cpu_cache_hits += 1
            host.move_to_end(adapter)
        else:
            result.disk_loads += 1
            host[adapter] = None
            if len(host) > engine.max_cpu_loras:
                host.popitem(last=False)
        if len(slots) >= engine.max_loras:
            victim = next((a for a in slots if a not in needed), None)
            if victim is not None:
                del slots[victim]
                result.evictions += 1
        slots[adapter] = None
