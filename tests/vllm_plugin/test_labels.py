"""Adapter names -> bounded labels, warm-up dummies excluded, the registry followed at once."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from tenantserve.registry.watch import file_state
from tenantserve.vllm_plugin.labels import WARMUP_PATH, AdapterLabels, read_registry_names
from tenantserve.vllm_plugin.metrics import EngineMetrics


def test_known_kept_unknown_other_warmup_excluded() -> None:
    labels = AdapterLabels(frozenset({"sql", "warmup_1"}))
    assert labels.label("sql", "/models/sql") == "sql"
    assert labels.label("someone-elses", "/x") == "other"
    assert labels.label("warmup_1", WARMUP_PATH) is None
    assert labels.label("warmup_1", "/models/warmup_1") == "warmup_1"  # a real adapter may carry that name


def test_unknown_name_rereads_the_registry_at_once_when_it_changed(tmp_path: Path) -> None:
    source = tmp_path / "adapters.yaml"
    source.write_text("v1")
    names = {"v1": frozenset({"sql"}), "v2": frozenset({"sql", "newbie"})}
    reads: list[str] = []

    def reader(p: Path) -> frozenset[str]:
        reads.append(p.read_text())
        return names[p.read_text()]

    labels = AdapterLabels.from_registry(source, reader)
    assert labels.known == {"sql"} and reads == ["v1"]
    assert labels.label("newbie") == "other" and reads == ["v1"]  # unchanged file: a stat, no re-read
    source.write_text("v2")
    assert labels.label("newbie") == "newbie" and reads == ["v1", "v2"]  # no waiting interval


def test_a_same_second_rewrite_of_the_same_size_is_seen(tmp_path: Path) -> None:
    """mtime in ns (and the inode, which an atomic rename changes), not a float second: a rewrite within the same
    second, same size, is a change."""
    source = tmp_path / "adapters.yaml"
    source.write_text("v1")
    os.utime(source, ns=(10**18, 10**18))
    before = file_state(source)
    labels = AdapterLabels.from_registry(source, lambda p: frozenset({p.read_text()}))
    assert labels.known == {"v1"}
    source.write_text("v2")  # in place: same inode, same size
    os.utime(source, ns=(10**18 + 1, 10**18 + 1))  # 1 ns later: the same second as a float
    assert file_state(source) != before and int(os.stat(source).st_mtime) == 10**9
    assert labels.refresh() == {"v2"}


def test_refresh_reports_new_names_and_a_broken_edit_keeps_the_old_ones(tmp_path: Path) -> None:
    source = tmp_path / "adapters.yaml"
    source.write_text("a")
    content = {"a": frozenset({"sql"}), "ab": frozenset({"sql", "hot"})}

    def reader(p: Path) -> frozenset[str]:
        text = p.read_text()
        if text not in content:
            raise ValueError("half-edited")
        return content[text]

    labels = AdapterLabels.from_registry(source, reader)
    assert labels.known == content["a"]
    created: list[list[str]] = []
    labels.on_new = created.append
    assert labels.refresh() == frozenset()
    source.write_text("broken!")
    assert labels.refresh() == frozenset() and labels.known == {"sql"}
    source.write_text("ab")
    assert labels.refresh() == {"hot"} and created == [["hot"]]
    assert labels.label("hot") == "hot"


def test_a_registered_adapter_has_its_series_at_zero_before_any_event(write_registry, make_adapter) -> None:  # type: ignore[no-untyped-def]
    """What the plugin wires (EnginePlugin.metrics): on_new creates every per-adapter series of the new name."""
    doc = {"base": {"name": "b", "path": "base"},
           "tenants": [{"id": "t", "adapters": [{"name": "sql", "path": str(make_adapter("sql"))}]}]}
    path = write_registry(doc)
    registry = CollectorRegistry()
    metrics = EngineMetrics.create(registry)
    labels = AdapterLabels.from_registry(path)
    metrics.touch(sorted(labels.known))
    labels.on_new = metrics.touch
    assert registry.get_sample_value("tenantserve_lora_disk_loads_total", {"adapter": "hot"}) is None
    doc["tenants"][0]["adapters"].append({"name": "hot", "path": str(make_adapter("hot"))})
    path.write_text(yaml.safe_dump(doc))
    labels.refresh()
    for name in ("slot_hits", "slot_misses", "slot_evictions", "cpu_cache_hits", "disk_loads", "defers",
                 "deferred_requests"):
        assert registry.get_sample_value(f"tenantserve_lora_{name}_total", {"adapter": "hot"}) == 0.0


def test_from_registry_reads_adapter_names(write_registry, make_adapter) -> None:  # type: ignore[no-untyped-def]
    path = write_registry({"base": {"name": "b", "path": "base"},
                           "tenants": [{"id": "t", "adapters": [{"name": "sql", "path": str(make_adapter("sql"))}]}]})
    assert read_registry_names(path) == {"sql"}
    assert AdapterLabels.from_registry(path).label("sql") == "sql"
    assert AdapterLabels.from_registry(path.parent / "missing.yaml").label("sql") == "other"
    assert AdapterLabels.from_registry(None).label("sql") == "other"
