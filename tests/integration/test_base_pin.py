"""A launch against a tampered base refuses to start: the refusal happens before any engine process exists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tenantserve.admission.adapter_dir import write_stamp
from tenantserve.admission.fingerprint import fingerprint
from tenantserve.errors import BaseModelError
from tests.conftest import EMBEDDED
from tests.integration.engines import copy_registry, start_engine
from tests.lora_corpus import flip_byte, make_adapter, make_base


def _pin(registry_path: Path, base: Path) -> str:
    data = yaml.safe_load(registry_path.read_text())
    fp = fingerprint(base)
    data["base"].update(path=str(base), fingerprint=fp.value, files=fp.manifest())
    registry_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return fp.value


def _assert_refused(registry_path: Path, log: Path, changed: str, pinned: str) -> None:
    with pytest.raises(BaseModelError) as info:
        start_engine(registry_path, log, timeout=5)
    assert info.value.code == "base_changed" and f"{changed} (pinned " in str(info.value)
    assert f"pinned {pinned}, found sha256:" in str(info.value)
    assert not log.exists()  # the engine process was never started


def test_launch_against_a_tampered_corpus_base_refuses_to_start(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    write_stamp(make_adapter(tmp_path / "adapters" / "sql"), fingerprint(base).value)
    reg = tmp_path / "adapters.yaml"
    reg.write_text(yaml.safe_dump({"base": {"name": "tiny", "path": "base"},
                                   "tenants": [{"id": "acme", "adapters": [{"name": "sql", "path": "adapters/sql"}]}]}))
    pinned = _pin(reg, base)
    flip_byte(base / "model.safetensors")
    _assert_refused(reg, tmp_path / "engine.log", "model.safetensors", pinned)


@pytest.mark.skipif(not (EMBEDDED / "base").is_dir(), reason="embedded model not built yet")
def test_launch_against_a_tampered_embedded_base_refuses_to_start(tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(EMBEDDED / "base", base)
    reg = copy_registry(tmp_path / "adapters.yaml")
    pinned = _pin(reg, base)
    flip_byte(base / "config.json", 2)  # one character of the architecture's config
    _assert_refused(reg, tmp_path / "engine.log", "config.json", pinned)
