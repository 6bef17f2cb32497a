from __future__ import annotations

import pytest
from click.testing import CliRunner

from tenantserve.cli.simulate import command
from tenantserve.planning.simulate import Engine, Result, simulate_requests
from tenantserve.planning.trace import Traffic, generate


def run(traffic: Traffic, engine: Engine, steps: int = 5000, seed: int = 0) -> Result:
    return simulate_requests(generate(traffic, steps, seed), engine)


def test_fewer_adapters_than_slots_never_defers_and_loads_each_once() -> None:
    r = run(Traffic(adapters=6, shape="uniform", rate=0.5), Engine(max_loras=8, max_cpu_loras=8), steps=2000)
    assert sum(r.defers.values()) == 0 and not r.deferred_requests
    assert sum(r.misses.values()) == r.disk_loads == 6 and r.evictions == 0
    assert r.verdict == "comfortable"


@pytest.mark.parametrize("shape", ["skewed", "uniform", "burst"])
def test_slot_accounting_invariants(shape: str) -> None:
    engine = Engine(max_loras=4, max_cpu_loras=10)
    r = run(Traffic(adapters=30, shape=shape, rate=0.3, tokens=16), engine, steps=3000, seed=3)
    # slots never shrink: every miss after the first max_loras ones evicts exactly one adapter
    assert r.evictions == max(0, sum(r.misses.values()) - engine.max_loras)
    assert r.disk_loads + r.cpu_cache_hits == sum(r.misses.values())
    assert len(r.deferred_requests) <= r.requests and len(r.waits) == r.requests


def test_uniform_traffic_melts_where_skewed_does_not() -> None:
    engine = Engine(max_loras=8, max_cpu_loras=40)
    skewed = run(Traffic(shape="skewed", zipf_s=1.6, rate=0.1), engine)
    uniform = run(Traffic(shape="uniform", rate=0.1), engine)
    assert uniform.deferred_fraction > 3 * skewed.deferred_fraction
    assert uniform.wait_quantile(0.99) > skewed.wait_quantile(0.99)


def test_small_host_cache_turns_slot_misses_into_disk_loads() -> None:
    traffic = Traffic(adapters=40, shape="uniform", rate=0.2)
    big = run(traffic, Engine(max_loras=8, max_cpu_loras=40))
    small = run(traffic, Engine(max_loras=8, max_cpu_loras=8))
    assert big.disk_loads == 40
    assert small.disk_loads > big.disk_loads and small.cpu_cache_hits < big.cpu_cache_hits


def test_same_seed_same_result_other_seed_other_result() -> None:
    a = run(Traffic(), Engine(), steps=1000, seed=1)
    b = run(Traffic(), Engine(), steps=1000, seed=1)
    c = run(Traffic(), Engine(), steps=1000, seed=2)
    assert (a.hits, a.misses, a.defers) == (b.hits, b.misses, b.defers)
    assert (a.hits, a.misses, a.waits) != (c.hits, c.misses, c.waits)


def test_cli_compares_three_shapes_with_units_and_reasons() -> None:
    res = CliRunner().invoke(command, ["--adapters", "20", "--max-loras", "4", "--steps", "800"], terminal_width=200)
    assert res.exit_code == 0, res.output
    for word in ("skewed", "uniform", "burst", "hit rate", "20 adapters on max_loras=4", "(steps)",
                 "waits in scheduler steps", "of requests deferred, hit rate"):
        assert word in res.output, res.output
    bad = CliRunner().invoke(command, ["--max-loras", "0"])
    assert bad.exit_code == 2 and "Invalid value for '--max-loras'" in bad.output
    bad = CliRunner().invoke(command, ["--max-loras", "8", "--max-cpu-loras", "4"])
    assert bad.exit_code == 2 and "max_cpu_loras 4 < max_loras 8" in bad.output
    bad = CliRunner().invoke(command, ["--tokens", "8", "--min-tokens", "9"])
    assert bad.exit_code == 2 and "Invalid value for '--min-tokens': 9 > --tokens 8" in bad.output


@pytest.mark.parametrize(("knobs", "message"), [
    ({"max_loras": 0}, "max_loras must be >= 1"),
    ({"max_num_seqs": 0}, "max_num_seqs must be >= 1"),
    ({"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras 2 < max_loras 4"),
])
def test_engines_vllm_would_refuse_are_refused(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Engine(**knobs)
