"""The simulator's rules on cases worked out by hand from vLLM 0.32's scheduler and LRU manager (simulate.py, 1-5)."""

from __future__ import annotations

from tenantserve.planning.simulate import Engine, Request, SlotState, simulate_requests


def wave(*requests: tuple[str | None, int], prompt: int = 4) -> list[Request]:
    return [Request(0, adapter, prompt, out) for adapter, out in requests]


def test_a_second_adapter_waits_for_the_only_slot_and_is_deferred_once_per_step() -> None:
    # step 0: a admitted, both b requests skipped (one defer for b: per adapter per step); a runs steps 0-2
    r = simulate_requests(wave(("a", 3), ("b", 2), ("b", 2)), Engine(max_loras=1, max_cpu_loras=4), waves=True)
    assert r.defers == {"b": 3} and r.deferred_requests == {1, 2}
    assert r.waits == [0, 3, 3]  # both b requests enter in step 3, beside each other
    assert r.hits == {"a": 2, "b": 1} and r.misses == {"a": 1, "b": 1}
    assert r.evicted == {"a": 1} and r.steps == 5


def test_batch_limit_queues_without_defers() -> None:
    r = simulate_requests(wave(("a", 2), ("a", 2), ("a", 2)), Engine(max_loras=1, max_num_seqs=2), waves=True)
    assert not r.defers and r.waits == [0, 0, 2]
    assert r.hits == {"a": 3} and r.misses == {"a": 1}  # one slot activation per step, whatever the batch


def test_running_requests_open_the_step_and_base_requests_never_wait() -> None:
    requests = [Request(0, "a", 4, 4), Request(1, "b", 4, 1), Request(1, None, 4, 1)]
    r = simulate_requests(requests, Engine(max_loras=1))
    assert r.waits == [0, 0, 3] and r.defers == {"b": 3}  # admitted: a, then the base beside it, then b


def test_long_prompt_is_chunked_by_the_token_budget() -> None:
    r = simulate_requests([Request(0, "a", 10, 2)], Engine(max_num_batched_tokens=4))
    assert r.steps == 4  # prefill 4 + 4 + 2 tokens (the third chunk samples token 1), then one decode step
    assert r.hits == {"a": 3} and r.misses == {"a": 1}


def test_without_the_slot_order_fix_a_step_evicts_an_adapter_it_needs() -> None:
    # slots: pirate (least recent), sql; the step runs pirate + french, and the set iterates french first
    order = lambda names: sorted(names)  # noqa: E731  french < pirate
    engine = Engine(max_loras=2, max_cpu_loras=4)
    requests = [Request(0, "pirate", 4, 1), Request(0, "french", 4, 1)]
    fixed, raw = (simulate_requests(requests, engine, waves=True, order=order, slot_order=flag,
                                    state=SlotState.holding(["pirate", "sql"], ["pirate", "sql", "french"]))
                  for flag in (True, False))
    assert fixed.evicted == {"sql": 1} and fixed.misses == {"french": 1}
    assert raw.evicted == {"pirate": 1, "sql": 1} and raw.misses == {"french": 1, "pirate": 1}


def test_host_cache_overflow_reads_from_disk_again() -> None:
    requests = [Request(i, name, 4, 1) for i, name in enumerate(["a", "b", "c", "a"])]
    r = simulate_requests(requests, Engine(max_loras=1, max_cpu_loras=2))
    assert r.disk_loads == 4 and r.cpu_cache_hits == 0  # a left the host cache when c came
    r = simulate_requests(requests, Engine(max_loras=1, max_cpu_loras=3))
    assert r.disk_loads == 3 and r.cpu_cache_hits == 1


def test_verdict_names_its_reason() -> None:
    calm = simulate_requests(wave(("a", 50)), Engine(max_loras=1), waves=True)
    assert calm.judge() == ("comfortable", "0% of requests deferred, hit rate 98% (<= 1% and >= 95%)")
    jam = simulate_requests(wave(("a", 5), ("b", 5)), Engine(max_loras=1), waves=True)
    verdict, why = jam.judge()
    assert verdict == "melting" and why.startswith("50% of requests deferred") and ">= 25% deferred" in why
