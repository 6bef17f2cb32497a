"""Replay a request trace on a real vLLM engine and through the simulator, and compare what the plugin counted.

What is compared, and why timing cannot change it (README, "The simulator, checked against vLLM"): the trace is
cut into *waves* (requests with the same arrival step). Each wave is queued while the scheduler is paused
(``/pause?mode=keep``, a dev route: the engine takes no step while its queue fills), resumed, and run to completion
before the next wave. Within a wave the queue order is fixed by vLLM's priority policy (priority = the request's
index in the trace, so the order is the trace's arrival order whatever order the HTTP requests land in); every
request has an exact prompt (token ids) and output length (``ignore_eos``), so the steps, the batches and the slot
activations are a function of the trace alone. The one thing vLLM leaves to the process is the iteration order of
its set of adapters (their name hashes): the engine gets a fixed ``PYTHONHASHSEED`` and the simulator is given the
same hashes. Before each trace a *flush* wave of filler adapters fills every slot, so each trace starts from the
same slot state.
The engine's counts are the plugin's ``tenantserve_lora_*`` counters from ``/metrics``, before and after each trace.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tenantserve.engine.process import EngineProcess
from tenantserve.errors import EngineError
from tenantserve.planning.simulate import Engine, Request, Result, SetOrder, SlotState, simulate_requests
from tenantserve.planning.trace import TraceError
from tenantserve.registry.schema import AdapterSpec, Registry, TenantSpec
from tenantserve.vllm_plugin.metrics import per_label

COUNTERS = ("slot_hits", "slot_misses", "slot_evictions", "defers", "deferred_requests")
#: Tolerances of ``--against-engine``: hit rate in points, evictions and defers relative to the engine's count.
HIT_RATE_POINTS, RELATIVE = 0.05, 0.20
HASH_SEED = "4242"


@dataclass(frozen=True)
class Counts:
    """The figures compared, for the trace's adapters only (fillers left out)."""

    hits: int
    misses: int
    evictions: int
    defers: int
    deferred_requests: int

    @property
    def hit_rate(self) -> float:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else 1.0

    @classmethod
    def of_result(cls, r: Result, keep: set[str]) -> Counts:
        def total(c: dict[str, int]) -> int:
            return sum(v for k, v in c.items() if k in keep)

        return cls(total(r.hits), total(r.misses), total(r.evicted), total(r.defers), len(r.deferred_requests))


@dataclass(frozen=True)
class Comparison:
    """One trace, replayed on the engine and simulated: what each counted."""

    trace: str
    engine: Counts
    simulated: Counts

    def problems(self) -> list[str]:
        """Where the simulator is outside the tolerances (empty: it agrees)."""
        out = []
        gap = abs(self.engine.hit_rate - self.simulated.hit_rate)
        if gap > HIT_RATE_POINTS:
            out.append(f"hit rate off by {gap * 100:.1f} points (> {HIT_RATE_POINTS * 100:.0f})")
        for name in ("evictions", "defers", "deferred_requests"):
            e, s = getattr(self.engine, name), getattr(self.simulated, name)
            if abs(e - s) > RELATIVE * e:
                out.append(f"{name.replace('_', ' ')} {s} vs the engine's {e} (> {RELATIVE:.0%} apart)")
        return out


def adapter_names(count: int) -> list[str]:
    return [f"sim{i:02d}" for i in range(count)]


def filler_names(max_loras: int) -> list[str]:
    return [f"flush{i}" for i in range(max_loras)]


def build_registry(source: Registry, dest: Path, *, adapters: int, engine: Engine) -> Path:
    """A registry in ``dest`` serving ``adapters`` copies of the source's first adapter plus one filler per slot
    (same weights under new names: vLLM treats names as distinct adapters). The host cache holds them all."""
    if not source.adapters():
        raise EngineError(f"{source.source}: the registry has no adapter to copy")
    _, first = source.adapters()[0]
    origin = source.adapter_path(first)
    reg = source.model_copy(deep=True)
    reg.base.path = source.base_path
    reg.tenants = []
    for name in adapter_names(adapters) + filler_names(engine.max_loras):
        shutil.copytree(origin, dest / name)
        spec = AdapterSpec(name=name, path=dest / name, base_fingerprint=first.base_fingerprint)
        reg.tenants.append(TenantSpec(id=f"tenant-{name}", adapters=[spec]))
    reg.engine.max_loras = engine.max_loras
    reg.engine.max_cpu_loras = engine.max_cpu_loras
    reg.engine.extra_args = [*reg.engine.extra_args, "--scheduling-policy", "priority",
                             "--max-num-seqs", str(engine.max_num_seqs),
                             "--max-num-batched-tokens", str(engine.max_num_batched_tokens)]
    reg.security.auth = False  # a private engine on loopback, started and stopped by this run
    path = dest / "adapters.yaml"
    reg.save(path)
    return path


def hash_order(names: Sequence[str], seed: str) -> dict[str, int]:
    """``hash(name)`` in a process with ``PYTHONHASHSEED=seed``: what vLLM's ``LoRARequest.__hash__`` gives there."""
    probe = "import sys; print(' '.join(str(hash(n)) for n in sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", probe, *names], env={**os.environ, "PYTHONHASHSEED": seed},
                         capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(names, map(int, out), strict=True))


class _Named:
    """A stand-in for ``LoRARequest`` in a set: equal by name, hashed as vLLM's process hashes the name."""

    __slots__ = ("name", "h")

    def __init__(self, name: str, h: int) -> None:
        self.name, self.h = name, h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Named) and other.name == self.name


def set_order(hashes: dict[str, int]) -> SetOrder:
    """The iteration order of vLLM's ``set(lora_id_to_lora_request.values())`` for names added in a given order."""

    def order(names: Sequence[str]) -> list[str]:
        return [n.name for n in set(_Named(name, hashes[name]) for name in names)]

    return order


class EngineReplay:
    """One engine for a whole run: started once, given traces one after another."""

    def __init__(self, base_url: str, base_model: str, engine: Engine, adapters: list[str], *,
                 fillers: list[str] | None = None, hash_seed: str = HASH_SEED, queue_seconds: float = 1.0) -> None:
        self.url = base_url
        self.base_model = base_model
        self.engine = engine
        self.adapters = adapters
        self.fillers = fillers if fillers is not None else filler_names(engine.max_loras)
        self.order = set_order(hash_order(adapters + self.fillers, hash_seed))
        self.queue_seconds = queue_seconds

    def compare(self, trace: str, requests: Sequence[Request]) -> Comparison:
        """Replay on the engine and in the simulator (same waves, same starting slots, same set order)."""
        return Comparison(trace, self.replay(requests), self.simulate(requests))

    def simulate(self, requests: Sequence[Request]) -> Counts:
        state = SlotState.holding(self.fillers, self.adapters + self.fillers)
        result = simulate_requests(requests, self.engine, waves=True, state=state, order=self.order)
        return Counts.of_result(result, set(self.adapters))

    def replay(self, requests: Sequence[Request]) -> Counts:
        flush = [Request(0, name, 4, 2) for name in self.fillers]
        asyncio.run(self._waves(flush))
        before = self._counters()
        asyncio.run(self._waves(requests))
        after = self._counters()
        keep = set(self.adapters)

        def diff(name: str) -> int:
            return round(sum(after[name].get(a, 0.0) - before[name].get(a, 0.0) for a in keep))

        return Counts(diff("slot_hits"), diff("slot_misses"), diff("slot_evictions"), diff("defers"),
                      diff("deferred_requests"))

    def _counters(self) -> dict[str, dict[str, float]]:
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {c: per_label(text, f"tenantserve_lora_{c}_total") for c in COUNTERS}

    async def _waves(self, requests: Sequence[Request]) -> None:
        indexed = sorted(enumerate(requests), key=lambda p: (p[1].arrival, p[0]))
        waves: dict[int, list[tuple[int, Request]]] = {}
        for index, request in indexed:
            waves.setdefault(request.arrival, []).append((index, request))
        async with httpx.AsyncClient(base_url=self.url, timeout=600) as client:
            for wave in waves.values():
                await self._wave(client, wave)

    async def _wave(self, client: httpx.AsyncClient, wave: list[tuple[int, Request]]) -> None:
        await _ok(client.post("/pause", params={"mode": "keep"}), "pause")
        try:
            start = time.monotonic()
            await _ok(client.get("/v1/models"), "models")  # how busy the API server is right now
            per_request = max(0.05, 5 * (time.monotonic() - start))
            sent = [asyncio.create_task(self._complete(client, index, r)) for index, r in wave]
            await asyncio.sleep(self.queue_seconds + per_request * len(wave))  # every request reaches the queue
        finally:
            await _ok(client.post("/resume"), "resume")
        await asyncio.gather(*sent)

    async def _complete(self, client: httpx.AsyncClient, index: int, r: Request) -> None:
        prompt = [100 + (index + k) % 800 for k in range(r.prompt_tokens)]  # token ids: exactly prompt_tokens
        body = {"model": r.adapter or self.base_model, "prompt": prompt,
                "max_tokens": r.output_tokens, "min_tokens": r.output_tokens, "ignore_eos": True,
                "temperature": 0, "priority": index}
        resp = await _ok(client.post("/v1/completions", json=body), f"request {index}")
        got = resp.json()["usage"]["completion_tokens"]
        if got != r.output_tokens:
            raise EngineError(f"request {index}: the engine generated {got} tokens, not {r.output_tokens}")


async def _ok(call: Awaitable[httpx.Response], what: str) -> httpx.Response:
    try:
        resp = await call
    except httpx.HTTPError as exc:
        raise EngineError(f"{what}: the engine did not answer ({exc.__class__.__name__})") from None
    if resp.status_code != 200:
        raise EngineError(f"{what}: the engine answered {resp.status_code}: {resp.text[:300]}")
    return resp


def start(registry_path: Path, log_path: Path, *, timeout: float = 600.0) -> tuple[EngineProcess, str]:
    """Start the engine for a run (dev routes on for /pause and /resume; the fixed hash seed). Raises EngineError."""
    from tenantserve.demo.run import free_port
    from tenantserve.engine.launch import plan_launch

    port = free_port()
    plan = plan_launch(Registry.load(registry_path), port=port)
    url = f"http://127.0.0.1:{port}"
    proc = EngineProcess(plan, base_url=url, log_path=log_path,
                         extra_env={"VLLM_SERVER_DEV_MODE": "1", "PYTHONHASHSEED": HASH_SEED})
    proc.start_ready(timeout)
    return proc, url


@dataclass(frozen=True)
class EngineRun:
    """The engine ``--against-engine`` starts: few slots so adapters contend, every adapter in the host cache."""

    adapters: int = 8
    max_loras: int = 2
    max_num_seqs: int = 4
    max_num_batched_tokens: int = 2048
    queue_seconds: float = 1.0

    @property
    def engine(self) -> Engine:
        return Engine(max_loras=self.max_loras, max_cpu_loras=self.adapters + self.max_loras,
                      max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens)


def rename(requests: Sequence[Request], names: Sequence[str]) -> list[Request]:
    """A recorded trace's adapters mapped onto the engine's adapter names, in order of first appearance."""
    seen: dict[str, str] = {}
    for r in requests:
        if r.adapter is not None and r.adapter not in seen:
            if len(seen) == len(names):
                raise TraceError(f"the trace uses more than {len(names)} adapters: raise --adapters")
            seen[r.adapter] = names[len(seen)]
    return [Request(r.arrival, seen[r.adapter] if r.adapter else None, r.prompt_tokens, r.output_tokens)
            for r in requests]


def against_engine(source: Registry, run: EngineRun, traces: Sequence[tuple[str, Sequence[Request]]],
                   workdir: Path) -> Iterator[Comparison]:
    """Start one engine for every trace (named), compare each, stop the engine. Raises ``TraceError`` (before
    starting anything) for a trace with more adapters than the run serves, ``EngineError`` when the engine fails."""
    names = adapter_names(run.adapters)
    renamed = [(trace, rename(requests, names)) for trace, requests in traces]
    registry_path = build_registry(source, workdir, adapters=run.adapters, engine=run.engine)
    proc, url = start(registry_path, workdir / "engine.log")
    try:
        replay = EngineReplay(url, source.base.name, run.engine, names, queue_seconds=run.queue_seconds)
        for trace, requests in renamed:
            yield replay.compare(trace, requests)
    finally:
        proc.stop()
