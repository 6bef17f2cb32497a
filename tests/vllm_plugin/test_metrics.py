"""Engine metric definitions and the per-start multiprocess directory."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from tenantserve.registry.metric_labels import OTHER_LABEL
from tenantserve.vllm_plugin.metrics import MULTIPROC_ENV, EngineMetrics, make_multiproc_dir


def test_names_are_the_agreed_ones_and_touch_creates_zero_series() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics.create(registry)
    metrics.touch(["sql"])
    names = {s.name for fam in registry.collect() for s in fam.samples}
    for counter in ("slot_hits", "slot_misses", "slot_evictions", "cpu_cache_hits", "disk_loads", "defers",
                    "deferred_requests"):
        assert f"tenantserve_lora_{counter}_total" in names
        for adapter in ("sql", OTHER_LABEL):
            assert registry.get_sample_value(f"tenantserve_lora_{counter}_total", {"adapter": adapter}) == 0
    assert {"tenantserve_lora_slots_used", "tenantserve_lora_slots_total", "tenantserve_lora_load_seconds_count"} <= names
    assert not [n for n in names if n.startswith("vllm:")]


def test_every_start_gets_a_fresh_empty_directory(tmp_path: Path) -> None:
    a = make_multiproc_dir({})
    b = make_multiproc_dir({})
    try:
        assert a != b and a.is_dir() and not any(a.iterdir())
    finally:
        a.rmdir()
        b.rmdir()
    parent = tmp_path / "k8s-emptydir"
    inside = make_multiproc_dir({MULTIPROC_ENV: str(parent)})
    assert inside.parent == parent and not any(inside.iterdir())


def _probe_plan(out: Path) -> object:
    """A stand-in engine (a Python one-liner): records the metrics dir it was given and whether it was empty."""
    import sys

    from tenantserve.engine.launch import LaunchPlan, ResolvedKnobs

    code = ("import os, json, pathlib; d = os.environ['PROMETHEUS_MULTIPROC_DIR']; "
            f"pathlib.Path({str(out)!r}).write_text(json.dumps([d, os.listdir(d)]))")
    return LaunchPlan(argv=[sys.executable, "-c", code], env={}, knobs=ResolvedKnobs(1, 8, 1, False))


def test_run_foreground_and_engine_process_give_each_start_a_fresh_dir(tmp_path: Path,
                                                                      monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from tenantserve.engine.launch import run_foreground
    from tenantserve.engine.process import EngineProcess

    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "parent"))
    out = tmp_path / "seen.json"
    dirs = []
    for _ in range(2):
        assert run_foreground(_probe_plan(out)) == 0  # type: ignore[arg-type]
        seen, listing = json.loads(out.read_text())
        assert listing == [] and Path(seen).parent == tmp_path / "parent"
        assert not Path(seen).exists()  # removed once the engine exited
        dirs.append(seen)
    proc = EngineProcess(_probe_plan(out), base_url="http://127.0.0.1:9", log_path=tmp_path / "e.log")  # type: ignore[arg-type]
    proc.start()
    assert proc.proc is not None and proc.proc.wait(30) == 0
    seen, listing = json.loads(out.read_text())
    assert listing == [] and seen not in dirs and Path(seen).exists()
    proc.stop()
    assert not Path(seen).exists()
