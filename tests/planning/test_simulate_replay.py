"""The pieces of ``--against-engine`` that need no engine: its registry, the trace renaming, the tolerances."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantserve.planning.replay import Comparison, Counts, EngineRun, against_engine, build_registry, rename
from tenantserve.planning.simulate import Request
from tenantserve.planning.trace import TraceError
from tenantserve.registry.schema import Registry
from tests.conftest import DEFAULT_REGISTRY


def test_engine_registry_serves_copies_and_one_filler_per_slot(tmp_path: Path) -> None:
    run = EngineRun(adapters=5, max_loras=3, max_num_seqs=6)
    reg = Registry.load(build_registry(Registry.load(DEFAULT_REGISTRY), tmp_path, adapters=5, engine=run.engine))
    names = [a.name for _, a in reg.adapters()]
    assert names == ["sim00", "sim01", "sim02", "sim03", "sim04", "flush0", "flush1", "flush2"]
    assert len(reg.tenants) == 8 and all(reg.adapter_path(a).is_dir() for _, a in reg.adapters())
    assert reg.engine.max_loras == 3 and reg.engine.max_cpu_loras == 8  # every adapter stays in host memory
    args = reg.engine.extra_args
    assert args[args.index("--scheduling-policy") + 1] == "priority"
    assert args[args.index("--max-num-seqs") + 1] == "6"
    assert reg.security.auth is False


def test_recorded_adapters_map_onto_the_engines_in_order_of_appearance() -> None:
    trace = [Request(0, "sql", 3, 4), Request(1, None, 3, 4), Request(2, "bob", 5, 6), Request(3, "sql", 3, 4)]
    assert [r.adapter for r in rename(trace, ["x", "y"])] == ["x", None, "y", "x"]
    with pytest.raises(TraceError, match="more than 1 adapters"):
        rename(trace, ["x"])


def test_a_trace_with_too_many_adapters_fails_before_any_engine_starts(tmp_path: Path) -> None:
    trace = [Request(i, f"t{i}", 4, 4) for i in range(3)]
    with pytest.raises(TraceError):
        next(against_engine(Registry.load(DEFAULT_REGISTRY), EngineRun(adapters=2), [("t", trace)], tmp_path))
    assert not (tmp_path / "adapters.yaml").exists() and not (tmp_path / "engine.log").exists()


@pytest.mark.parametrize(("simulated", "problem"), [
    (Counts(900, 100, 50, 40, 10), None),
    (Counts(890, 110, 59, 47, 11), None),  # 1 point, 18%, 17.5%, 10%
    (Counts(840, 160, 50, 40, 10), "hit rate off by 6.0 points"),
    (Counts(900, 100, 61, 40, 10), "evictions 61 vs the engine's 50"),
    (Counts(900, 100, 50, 31, 10), "defers 31 vs the engine's 40"),
    (Counts(900, 100, 50, 40, 13), "deferred requests 13 vs the engine's 10"),
])
def test_tolerances(simulated: Counts, problem: str | None) -> None:
    problems = Comparison("t", Counts(900, 100, 50, 40, 10), simulated).problems()
    assert (problems == []) if problem is None else (len(problems) == 1 and problems[0].startswith(problem))
