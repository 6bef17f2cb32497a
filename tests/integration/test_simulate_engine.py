"""The simulator against a real vLLM engine: the same traces, replayed in paused waves, give the same counters.

One engine of its own (8 copies of an embedded adapter + 2 fillers on max_loras=2, priority queue, fixed hash seed;
``planning.replay``), three shapes, two seeds. The engine's figures are the plugin's ``tenantserve_lora_*`` counters.
"""

from __future__ import annotations

from pathlib import Path

from tenantserve.planning.replay import EngineRun, against_engine
from tenantserve.planning.trace import SHAPES, Traffic, generate
from tenantserve.registry.schema import Registry
from tests.conftest import DEFAULT_REGISTRY


def test_simulator_agrees_with_the_engine_on_three_shapes(tmp_path: Path) -> None:
    run = EngineRun(adapters=8, max_loras=2, max_num_seqs=4)
    traces = []
    for shape in SHAPES:
        traffic = Traffic(adapters=8, shape=shape, rate=4, tokens=24, min_tokens=8)
        traces += [(f"{shape}/{seed}", generate(traffic, 5, seed, [f"sim{i:02d}" for i in range(8)]))
                   for seed in (0, 1)]
    results = list(against_engine(Registry.load(DEFAULT_REGISTRY), run, traces, tmp_path))
    assert len(results) == len(traces)
    for c in results:
        assert not c.problems(), (c.trace, c.engine, c.simulated)
        # the traces make adapters contend: a trace that moved nothing would agree trivially
        assert c.engine.misses > 2 and c.engine.evictions > 0 and c.engine.defers > 0, (c.trace, c.engine)
    uniform = [c.engine for c in results if c.trace.startswith("uniform")]
    burst = [c.engine for c in results if c.trace.startswith("burst")]
    assert sum(e.misses for e in uniform) > sum(e.misses for e in burst)  # a moving small working set thrashes less
