"""Adapter names -> bounded labels, warm-up dummies excluded, registry re-read on change."""

from __future__ import annotations

import os
from pathlib import Path

from tenantserve.vllm_plugin.labels import WARMUP_PATH, AdapterLabels, read_registry_names


def test_known_kept_unknown_other_warmup_excluded() -> None:
    labels = AdapterLabels(frozenset({"sql", "warmup_1"}))
    assert labels.label("sql", "/models/sql") == "sql"
    assert labels.label("someone-elses", "/x") == "other"
    assert labels.label("warmup_1", WARMUP_PATH) is None
    assert labels.label("warmup_1", "/models/warmup_1") == "warmup_1"  # a real adapter may carry that name


def test_unknown_name_rereads_the_registry_when_it_changed(tmp_path: Path) -> None:
    source = tmp_path / "adapters.yaml"
    source.write_text("v1")
    names = {"v1": frozenset({"sql"}), "v2": frozenset({"sql", "newbie"})}
    now = [0.0]
    labels = AdapterLabels(names["v1"], source=source, reader=lambda p: names[p.read_text()],
                           clock=lambda: now[0], min_interval=5.0)
    assert labels.label("newbie") == "other"
    source.write_text("v2")
    os.utime(source, (1e9, 1e9))
    assert labels.label("newbie") == "other"  # within min_interval: no re-read yet
    now[0] = 6.0
    assert labels.label("newbie") == "newbie"


def test_from_registry_reads_adapter_names(write_registry, make_adapter) -> None:  # type: ignore[no-untyped-def]
    path = write_registry({"base": {"name": "b", "path": "base"},
                           "tenants": [{"id": "t", "adapters": [{"name": "sql", "path": str(make_adapter("sql"))}]}]})
    assert read_registry_names(path) == {"sql"}
    assert AdapterLabels.from_registry(path).label("sql") == "sql"
    assert AdapterLabels.from_registry(path.parent / "missing.yaml").label("sql") == "other"
    assert AdapterLabels.from_registry(None).label("sql") == "other"
