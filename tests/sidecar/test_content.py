"""ServedContent: which store copy each registered adapter is served from, and when its folder stopped holding it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.store import AdapterStore
from tenantserve.errors import AdapterError
from tenantserve.registry.schema import Registry
from tenantserve.sidecar.content import ServedContent
from tests.lora_corpus import flip_byte, make_adapter


@pytest.fixture
def content(tmp_path: Path) -> ServedContent:
    store = AdapterStore(tmp_path / "store", cache=FingerprintCache(tmp_path / "cache", racy_window_ns=0).load())
    return ServedContent(store, tmp_path / "adapters")


def _registry(tmp_path: Path, **adapter: object) -> Registry:
    data = {"base": {"name": "tiny", "path": "base"},
            "tenants": [{"id": "acme", "adapters": [{"name": "a", "path": "adapters/acme/a", **adapter}]}]}
    return Registry.parse(json.dumps(data), root=tmp_path)


def _resolve(content: ServedContent, reg: Registry, served: str | None = None) -> Path:
    tenant, adapter = reg.adapters()[0]
    return content.resolve(reg, tenant.id, adapter, served)


def test_an_unpinned_adapter_is_copied_and_then_held_to_what_was_loaded(tmp_path: Path,
                                                                        content: ServedContent) -> None:
    folder = make_adapter(tmp_path / "adapters" / "acme" / "a")
    reg = _registry(tmp_path)
    path = _resolve(content, reg)
    assert path.parent == content.store.root and _resolve(content, reg) == path  # not loaded yet: follows the folder
    assert _resolve(content, reg, served=str(path)) == path  # now served from it: remembered
    flip_byte(folder / "adapter_model.safetensors")
    with pytest.raises(AdapterError) as info:
        _resolve(content, reg, served=None)  # even after the engine forgot it (a restart)
    assert info.value.code == "adapter_changed" and str(folder) in str(info.value)
    flip_byte(folder / "adapter_model.safetensors")
    assert _resolve(content, reg) == path  # restored: recovers


def test_what_the_engine_serves_from_the_store_is_the_expected_content_after_a_sidecar_restart(
        tmp_path: Path, content: ServedContent) -> None:
    folder = make_adapter(tmp_path / "adapters" / "acme" / "a")
    reg = _registry(tmp_path)
    served = str(_resolve(content, reg))
    fresh = ServedContent(content.store, content.adapters_root)  # a new sidecar, same engine
    make_adapter(folder, seed=9)
    with pytest.raises(AdapterError) as info:
        _resolve(fresh, reg, served=served)
    assert info.value.code == "adapter_changed"
    with pytest.raises(AdapterError):  # withdrawn (no longer served): still held to what was served
        _resolve(fresh, reg, served=None)
    other = ServedContent(content.store, content.adapters_root)
    assert _resolve(other, reg, served="/some/folder/not/in/the/store") != Path(served)  # not ours: follows


def test_a_pinned_adapter_is_checked_against_its_pin_and_a_missing_folder_is_path_missing(
        tmp_path: Path, content: ServedContent) -> None:
    folder = make_adapter(tmp_path / "adapters" / "acme" / "a")
    pin = content.store.digest(folder)
    reg = _registry(tmp_path, fingerprint=pin)
    path = _resolve(content, reg)
    assert path == content.store.path_for(pin)
    shutil.rmtree(content.store.root)  # the store was cleared: copied again from the unchanged folder
    assert _resolve(content, reg) == path and path.is_dir()
    shutil.rmtree(folder)
    with pytest.raises(AdapterError) as info:
        _resolve(content, reg)
    assert info.value.code == "path_missing"
    make_adapter(folder, seed=5)
    with pytest.raises(AdapterError) as info:
        _resolve(content, reg)
    assert info.value.code == "adapter_changed"


def test_files_in_a_tenant_folder_must_stay_inside_it(tmp_path: Path, content: ServedContent) -> None:
    other = make_adapter(tmp_path / "adapters" / "globex" / "secret")
    folder = make_adapter(tmp_path / "adapters" / "acme" / "a")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.safetensors").symlink_to(other / "adapter_model.safetensors")
    with pytest.raises(AdapterError) as info:
        _resolve(content, _registry(tmp_path))
    assert info.value.code == "path_escape"
    hub = make_adapter(tmp_path / "hub" / "x")  # registered by the operator outside any tenant folder: trusted
    reg = Registry.parse(json.dumps({"base": {"name": "tiny", "path": "base"}, "tenants": [
        {"id": "acme", "adapters": [{"name": "x", "path": str(hub)}]}]}), root=tmp_path)
    assert content.scope("acme", hub) is None and _resolve(content, reg).is_dir()
