"""Throughput with and without the tenantserve engine plugin, side by side in one run.

Two engines from the same registry run at the same time; only one is loaded at any moment: rounds alternate
between them (ABBA order), so drift in the machine's load hits both alike. The plugin is switched off the way vLLM
offers: ``VLLM_PLUGINS`` set to every other general plugin. Each round sends the same mixed workload (three adapters
on max_loras=2 plus the base: hits, misses, evictions and defers all happen) and measures generated tokens/s.
A micro-benchmark then times the slot hook itself per scheduler step, against vLLM's own code path.

    .venv/bin/python scripts/bench_plugin.py [--registry configs/adapters.yaml] [--rounds 8] [--hook-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import httpx
from openai import OpenAI

from tenantserve.demo.run import free_port
from tenantserve.engine.launch import plan_launch
from tenantserve.engine.process import EngineProcess
from tenantserve.registry.schema import Registry

PROMPT = "Table users(id,name). Query all names:"


def start(registry: Registry, log: Path, *, plugin: bool) -> EngineProcess:
    port = free_port()
    plan = plan_launch(registry, port=port)
    extra = {}
    if not plugin:
        others = [ep.name for ep in entry_points(group="vllm.general_plugins") if ep.name != "tenantserve"]
        extra["VLLM_PLUGINS"] = ",".join(others)
    proc = EngineProcess(plan, base_url=f"http://127.0.0.1:{port}", log_path=log, extra_env=extra)
    proc.start()
    return proc


def workload(url: str, models: list[str], requests: int, tokens: int) -> float:
    """Generated tokens per second for ``requests`` concurrent completions spread over ``models``."""
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

    def one(i: int) -> int:
        r = client.completions.create(model=models[i % len(models)], prompt=PROMPT, max_tokens=tokens,
                                      temperature=0, extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        total = sum(pool.map(one, range(requests)))
    return total / (time.perf_counter() - start)


def hook_cost(steps: int = 20000, repeats: int = 7) -> dict[str, float]:
    """Microseconds per scheduler step of vLLM's ``_apply_adapters`` for 2 adapters already in their slots (the
    common step): plain vLLM, with the slot-order fix only, with the counters only, and with both (as the plugin
    installs them). Each is the fastest of ``repeats`` runs, interleaved, so a busy moment hits all alike."""
    from prometheus_client import CollectorRegistry
    from vllm.lora import model_manager as mm
    from vllm.lora import worker_manager as wm
    from vllm.lora.request import LoRARequest

    from tenantserve.vllm_plugin import slot_order, slots
    from tenantserve.vllm_plugin.labels import AdapterLabels
    from tenantserve.vllm_plugin.metrics import EngineMetrics

    class Model(mm.LRUCacheLoRAModelManager):
        def _validate_moe_lora_format(self, lora: object) -> None: ...
        def _create_merged_loras_inplace(self, lora: object) -> None: ...

    class Plain(wm.LRUCacheWorkerLoRAManager):
        def _load_adapter(self, r: LoRARequest) -> object:
            return SimpleNamespace(id=r.lora_int_id)

    variants: dict[str, type] = {"plain": Plain}
    for name, order, count in (("order", True, False), ("count", False, True), ("both", True, True)):
        cls = type(f"Hooked_{name}", (Plain,), {})
        if order:
            slot_order.install(cls)
        if count:
            slots.install(cls, slots.SlotRecorder(EngineMetrics.create(CollectorRegistry()),
                                                  AdapterLabels(frozenset({"a", "b"}))))
        variants[name] = cls

    def worker(cls: type) -> object:
        model = object.__new__(Model)
        model.lora_config = SimpleNamespace(max_loras=2, max_cpu_loras=4)
        model._registered_adapters = mm.AdapterLRUCache(4, model.deactivate_adapter)
        model._active_adapters = mm.AdapterLRUCache(2, model._deactivate_adapter)
        model.lora_index_to_id = [None, None]
        model.modules = {}
        w = object.__new__(cls)
        w._adapter_manager = model
        return w

    batch = {LoRARequest("a", 1, "/a"), LoRARequest("b", 2, "/b")}
    workers = {name: worker(cls) for name, cls in variants.items()}
    best = dict.fromkeys(workers, float("inf"))
    for w in workers.values():
        w._apply_adapters(batch)  # fill the slots
    for _ in range(repeats):
        for name, w in workers.items():
            t = time.perf_counter()
            for _ in range(steps):
                w._apply_adapters(batch)
            best[name] = min(best[name], (time.perf_counter() - t) / steps * 1e6)
    return best


def print_hook_cost(step_us: float | None = None) -> None:
    c = hook_cost()
    line = (f"worker hooks, us/step (2 adapters in slots, best of 7): vLLM alone {c['plain']:.1f}, "
            f"+slot order {c['order'] - c['plain']:+.1f}, +counters {c['count'] - c['plain']:+.1f}, "
            f"both (the plugin) {c['both'] - c['plain']:+.1f}")
    if step_us:
        line += f"; a decode step here takes ~{step_us:.0f} us -> {(c['both'] - c['plain']) / step_us * 100:.3f}% of a step"
    print(line)


def _check_plugin(e: EngineProcess, plugin: bool) -> None:
    has = "tenantserve_lora_slot_hits_total" in httpx.get(f"{e.base_url}/metrics").text
    assert has == plugin, f"plugin={plugin} but the engine's /metrics says {has}"


def _sequential(registry: Registry, logs: Path, models: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """ABBA phases, one engine alive at a time; each phase warms up, then runs half the rounds for its side."""
    results: dict[str, list[float]] = {"with plugin": [], "without plugin": []}
    for i, name in enumerate(("with plugin", "without plugin", "without plugin", "with plugin")):
        e = start(registry, logs / f"{i}.log", plugin=name == "with plugin")
        try:
            e.wait_ready(600)
            _check_plugin(e, name == "with plugin")
            workload(e.base_url, models, args.requests, args.tokens)
            for _ in range(max(1, args.rounds // 2)):
                results[name].append(workload(e.base_url, models, args.requests, args.tokens))
                print(f"phase {i + 1} ({name}): {results[name][-1]:7.1f} tok/s", flush=True)
        finally:
            e.stop()
    return results


def _interleaved(registry: Registry, logs: Path, models: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    engines = {"with plugin": start(registry, logs / "with.log", plugin=True),
               "without plugin": start(registry, logs / "without.log", plugin=False)}
    results: dict[str, list[float]] = {k: [] for k in engines}
    try:
        for k, e in engines.items():
            e.wait_ready(600)
            _check_plugin(e, k == "with plugin")
        for e in engines.values():  # warm-up: first loads, allocator, caches
            workload(e.base_url, models, args.requests, args.tokens)
        names = list(engines)
        for r in range(args.rounds):
            for k in (names if r % 2 == 0 else names[::-1]):
                results[k].append(workload(engines[k].base_url, models, args.requests, args.tokens))
            print(f"round {r + 1}: " + "  ".join(f"{k} {results[k][-1]:7.1f} tok/s" for k in names), flush=True)
    finally:
        for e in engines.values():
            e.stop()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", type=Path, default=Path("configs/adapters.yaml"))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--mode", choices=["sequential", "interleaved"], default="sequential",
                   help="sequential: one engine alive at a time, phases in ABBA order (two vLLM CPU engines alive at once "
                        "compete for the same cores and skew each other); interleaved: both alive, rounds alternate")
    p.add_argument("--hook-only", action="store_true",
                   help="only the per-step micro-benchmark of the worker hooks (seconds; no engines)")
    args = p.parse_args()
    if args.hook_only:
        print_hook_cost()
        return 0
    registry = Registry.load(args.registry)
    models = [a.name for _, a in registry.adapters()] + [registry.base.name]
    logs = Path(tempfile.mkdtemp(prefix="bench-plugin-"))
    run = _sequential if args.mode == "sequential" else _interleaved
    results = run(registry, logs, models, args)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratios = [w / wo for w, wo in zip(results["with plugin"], results["without plugin"])]
    print(f"\nworkload: {args.requests} concurrent requests x {args.tokens} tokens over {models} "
          f"(max_loras={registry.engine.max_loras}), {args.rounds} rounds, ABBA order, {args.mode}")
    print(f"median throughput  with plugin: {med['with plugin']:.1f} tok/s   without: {med['without plugin']:.1f} tok/s")
    print(f"overhead (median of per-round ratios): {(1 - statistics.median(ratios)) * 100:+.2f}%  "
          f"(per-round ratios {min(ratios):.3f}..{max(ratios):.3f})")
    step_us = 1e6 / med["without plugin"] * min(args.requests, 256)  # one step generates a token per running request
    print_hook_cost(step_us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
