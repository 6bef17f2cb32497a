"""Engine metric definitions and the per-start multiprocess directory."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from tenantserve.metrics import MULTIPROC_ENV, OTHER, EngineMetrics, bounded_label, make_multiproc_dir


def test_bounded_label_keeps_known_names_and_collapses_the_rest() -> None:
    known = frozenset({"sql", "pirate"})
    assert bounded_label("sql", known) == "sql"
    assert bounded_label("evil-'name'", known) == OTHER


def test_names_are_the_agreed_ones_and_touch_creates_zero_series() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics.create(registry)
    metrics.touch(["sql"])
    names = {s.name for fam in registry.collect() for s in fam.samples}
    for counter in ("slot_hits", "slot_misses", "slot_evictions", "cpu_cache_hits", "disk_loads", "defers",
                    "deferred_requests"):
        assert f"tenantserve_lora_{counter}_total" in names
        for adapter in ("sql", OTHER):
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
