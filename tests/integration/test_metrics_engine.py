"""The engine plugin's counters against a real vLLM engine (the shared one: max_loras=2, three adapters).

Every test diffs ``/metrics`` before and after its own traffic and compares with what it sent: which adapter each
request used, in which order, and how many tokens came back (one scheduler step per generated token).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tenantserve.demo import embedded
from tenantserve.vllm_plugin.metrics import per_label
from tests.integration.engines import RunningEngine

COUNTERS = ("slot_hits", "slot_misses", "slot_evictions", "cpu_cache_hits", "disk_loads", "defers",
            "deferred_requests")


class Counts:
    """All plugin counters by adapter, as ``/metrics`` shows them now."""

    def __init__(self, engine: RunningEngine) -> None:
        text = httpx.get(f"{engine.url}/metrics", timeout=10).text
        self.text = text
        self.values = {c: per_label(text, f"tenantserve_lora_{c}_total") for c in COUNTERS}

    def __sub__(self, before: Counts) -> dict[str, dict[str, float]]:
        return {c: {a: v - before.values[c].get(a, 0.0) for a, v in self.values[c].items()} for c in COUNTERS}


def complete(engine: RunningEngine, model: str, max_tokens: int) -> int:
    """One request; returns the number of generated tokens (= scheduler steps it ran)."""
    resp = engine.openai().completions.create(model=model, prompt=embedded.SQL_PROMPT, max_tokens=max_tokens,
                                              temperature=0, extra_body={"ignore_eos": True})
    return resp.usage.completion_tokens


def test_metrics_beside_vllm_with_bounded_labels(engine: RunningEngine) -> None:
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    assert "vllm:" in text
    registry = engine.registry
    assert per_label(text, "tenantserve_lora_slots_total", "") == {"": registry.engine.max_loras}
    hits = per_label(text, "tenantserve_lora_slot_hits_total")
    assert set(hits) == {a.name for _, a in registry.adapters()} | {"other"}
    assert not [line for line in text.splitlines() if "warmup_" in line]


def test_three_adapters_cycling_through_two_slots_miss_and_evict_every_time(engine: RunningEngine) -> None:
    a, b, c = (adapter.name for _, adapter in engine.registry.adapters())
    for name in (a, b):  # known slot state afterwards: {a, b}, b most recent
        complete(engine, name, 2)
    before = Counts(engine)
    order = [c, a, b, c, a, b]
    tokens = {n: 0 for n in (a, b, c)}
    for name in order:  # sequential: one adapter per step, LRU over two slots evicts the next one needed
        tokens[name] += complete(engine, name, 8) - 1  # every step after the first needs it in its slot
    diff = Counts(engine) - before
    for name in (a, b, c):
        sent = order.count(name)
        assert diff["slot_misses"][name] == sent
        assert diff["slot_evictions"][name] == sent
        assert diff["slot_hits"][name] == tokens[name]
        assert diff["cpu_cache_hits"][name] + diff["disk_loads"][name] == sent
        assert diff["defers"][name] == 0 and diff["deferred_requests"][name] == 0


def test_one_adapter_converges_to_a_hit_rate_near_one(engine: RunningEngine) -> None:
    name = embedded.SQL_ADAPTER
    before = Counts(engine)
    with ThreadPoolExecutor(4) as pool:
        steps = sum(pool.map(lambda _: complete(engine, name, 24), range(12)))
    diff = Counts(engine) - before
    hits, misses = diff["slot_hits"][name], diff["slot_misses"][name]
    assert misses <= 1
    assert 0 < hits <= steps  # concurrent requests share steps: at most one hit per step
    assert hits / (hits + misses) >= 0.95
    assert diff["cpu_cache_hits"][name] + diff["disk_loads"][name] == misses
    assert diff["defers"][name] == diff["deferred_requests"][name] == 0


def send_waiters(client: object, waiter: str, waiting: int) -> None:
    """One HTTP request with ``waiting`` prompts: they reach the scheduler in the same step."""
    client.completions.create(model=waiter, prompt=[embedded.SQL_PROMPT] * waiting,  # type: ignore[attr-defined]
                              max_tokens=4, temperature=0, extra_body={"ignore_eos": True})


LONG_TOKENS, SHORT_TOKENS = 230, 30


def queue_in_order(engine: RunningEngine, long: str, short: str, waiter: str, waiting: int, *,
                   client_for: dict[str, object] | None = None, admin_headers: dict[str, str] | None = None) -> None:
    """A known order of events on the engine: with the scheduler paused, one long request for ``long``, one short
    one for ``short`` and then the waiter's ``waiting`` prompts are queued, in that order; on resume the first two
    take both slots, the waiter is deferred until ``short`` finishes, then enters beside ``long`` in the very next
    step. Sends 3 HTTP requests (``client_for``: a client per model, e.g. with its tenant's key). Needs the
    engine's dev routes (``/pause?mode=keep`` freezes the queue without dropping anything; ``admin_headers`` pass
    the tenant middleware). Timing-free: the engine does not step while paused."""
    clients = {name: (client_for or {}).get(name) or engine.openai() for name in (long, short, waiter)}

    def request(model: str, max_tokens: int) -> None:
        clients[model].completions.create(model=model, prompt=embedded.SQL_PROMPT,  # type: ignore[attr-defined]
                                          max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})

    with ThreadPoolExecutor(3) as pool:
        paused = httpx.post(f"{engine.url}/pause", params={"mode": "keep"}, headers=admin_headers, timeout=60)
        assert paused.status_code == 200, paused.text
        try:
            running = [pool.submit(request, long, LONG_TOKENS)]
            time.sleep(2.0)  # each request reaches the queue in milliseconds: a wrong order fails the test's asserts
            running.append(pool.submit(request, short, SHORT_TOKENS))
            time.sleep(2.0)
            running.append(pool.submit(send_waiters, clients[waiter], waiter, waiting))
            time.sleep(2.0)
        finally:
            resumed = httpx.post(f"{engine.url}/resume", headers=admin_headers, timeout=60)
            assert resumed.status_code == 200, resumed.text
        for f in running:
            f.result(timeout=300)


def set_order(names: tuple[str, ...], seed: str) -> list[str]:
    """How a set of adapter requests iterates in a process with PYTHONHASHSEED=seed (vLLM's LoRARequest hashes
    as its name), whichever order they were added in."""
    probe = ("import sys\nclass R:\n def __init__(s, n): s.n = n\n def __hash__(s): return hash(s.n)\n"
             "rs = [R(n) for n in sys.argv[1:]]\nprint(*[r.n for r in set(rs)], *[r.n for r in set(rs[::-1])])")
    out = subprocess.run([sys.executable, "-c", probe, *names], env={**os.environ, "PYTHONHASHSEED": seed},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[: len(names)] == out[len(names):], "order depends on insertion: pick another seed"
    return out[: len(names)]


def test_third_adapter_waits_while_two_others_hold_the_slots(engine: RunningEngine) -> None:
    a, b, c = (adapter.name for _, adapter in engine.registry.adapters())
    seed = engine.process.extra_env.get("PYTHONHASHSEED", "")
    assert set_order((a, b), seed)[0] == a and set_order((a, c), seed)[0] == c, "not the thrashing order"
    for name in (a, b):  # known slot state: {a, b}
        complete(engine, name, 2)
    before = Counts(engine)
    queue_in_order(engine, a, b, c, 3)
    diff = Counts(engine) - before
    assert diff["deferred_requests"][c] == 3, diff  # every request for c had to wait ...
    assert diff["deferred_requests"][a] == diff["deferred_requests"][b] == 0, diff  # ... and nobody else did
    # c is deferred in exactly the steps that ran b (all of them also ran a): one per token b generated
    assert diff["defers"][c] == diff["slot_hits"][b] + diff["slot_misses"][b] == SHORT_TOKENS, diff
    assert diff["slot_misses"][c] == 1, diff  # c's three requests entered together, into one freed slot
    # c took b's slot in the step right after b's last one, beside a, and nothing else moved.
    # The session engine's hash seed makes vLLM activate c before a in that step: without the plugin's
    # slot_order, c would push out a (the least recently used), which would push out b and be copied back.
    assert diff["slot_misses"][a] == 0, diff
    assert {n: diff["slot_evictions"][n] for n in (a, b, c)} == {a: 0, b: 1, c: 0}, diff


def test_base_requests_count_nothing(engine: RunningEngine) -> None:
    before = Counts(engine)
    complete(engine, engine.registry.base.name, 8)
    diff = Counts(engine) - before
    assert all(v == 0 for d in diff.values() for v in d.values()), diff


def test_an_adapter_outside_the_registry_is_counted_as_other(engine: RunningEngine) -> None:
    sql = engine.registry.find_adapter(embedded.SQL_ADAPTER)
    assert sql is not None
    path = str(engine.registry.adapter_path(sql[1]))
    before = Counts(engine)
    r = httpx.post(f"{engine.url}/v1/load_lora_adapter", json={"lora_name": "stranger", "lora_path": path}, timeout=60)
    assert r.status_code == 200, r.text
    try:
        steps = complete(engine, "stranger", 6)
    finally:
        httpx.post(f"{engine.url}/v1/unload_lora_adapter", json={"lora_name": "stranger"}, timeout=60)
    after = Counts(engine)
    diff = after - before
    assert diff["disk_loads"]["other"] == 1  # the runtime load read it from disk into a slot ...
    assert diff["slot_hits"]["other"] == steps  # ... so every step of the request found it there
    assert not [line for line in after.text.splitlines() if line.startswith("tenantserve_") and "stranger" in line]
