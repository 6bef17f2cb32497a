"""The adapter store: content-addressed, read-only copies; bounded, symlink-aware reads of a tenant's folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tenantserve.admission.adapter_dir import write_stamp
from tenantserve.admission.fingerprint import fingerprint, manifest_digest
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.store import (
    AdapterStore,
    AdapterStoreError,
    StoredAdapter,
    admit_stored,
    default_store_dir,
)
from tenantserve.errors import AdapterError
from tenantserve.registry.schema import Registry
from tests.lora_corpus import flip_byte, make_adapter, make_base


@pytest.fixture
def cache(tmp_path: Path) -> FingerprintCache:
    return FingerprintCache(tmp_path / "cache", racy_window_ns=0).load()


@pytest.fixture
def store(tmp_path: Path, cache: FingerprintCache) -> AdapterStore:
    return AdapterStore(tmp_path / "store", cache=cache)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = make_adapter(tmp_path / "tenant" / "a")
    (d / "README.md").write_text("not served\n")
    (d / "tokenizer.json").write_text("{}")
    return d


def _entries(store: AdapterStore) -> list[str]:
    return sorted(os.listdir(store.root))


def test_put_copies_only_the_served_files_read_only_under_their_fingerprint(store: AdapterStore, folder: Path) -> None:
    stored = store.put(folder)
    assert stored.copied and stored.path == store.root / f"sha256-{stored.fingerprint.removeprefix('sha256:')}"
    assert sorted(os.listdir(stored.path)) == ["adapter_config.json", "adapter_model.safetensors"]
    for name in os.listdir(stored.path):
        assert (stored.path / name).read_bytes() == (folder / name).read_bytes()
        assert stat.S_IMODE((stored.path / name).stat().st_mode) == 0o444
        assert stored.files[name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o555
    # the copy's fingerprint is tenantserve's own, and reproducible with sha256sum
    assert stored.fingerprint == fingerprint(stored.path).value == manifest_digest(dict(stored.files))
    out = subprocess.run("sha256sum adapter_config.json adapter_model.safetensors | LC_ALL=C sort -k2 | sha256sum",
                         shell=True, cwd=folder, capture_output=True, text=True, check=True).stdout.split()[0]
    assert stored.fingerprint == "sha256:" + out
    assert _entries(store) == [stored.path.name]  # no temp directory left behind


def test_the_copy_does_not_follow_the_folder_and_new_content_gets_a_new_path(store: AdapterStore,
                                                                            folder: Path) -> None:
    first = store.put(folder)
    before = (first.path / "adapter_model.safetensors").read_bytes()
    flip_byte(folder / "adapter_model.safetensors")
    assert (first.path / "adapter_model.safetensors").read_bytes() == before
    second = store.put(folder)
    assert second.path != first.path and second.fingerprint != first.fingerprint
    assert (second.path / "adapter_model.safetensors").read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    assert store.digest(folder) == second.fingerprint


def test_same_content_is_stored_once_and_unchanged_files_are_not_read_again(store: AdapterStore, folder: Path,
                                                                          tmp_path: Path) -> None:
    first = store.put(folder)
    again = store.put(folder)
    assert (again.path, again.fingerprint, again.copied) == (first.path, first.fingerprint, False)
    other = tmp_path / "elsewhere"
    shutil.copytree(folder, other)
    assert store.put(other).path == first.path  # same content from another folder: the same copy
    assert _entries(store) == [first.path.name]


def test_without_a_cache_a_repeat_still_lands_on_the_same_copy(tmp_path: Path, folder: Path) -> None:
    store = AdapterStore(tmp_path / "s")
    a, b = store.put(folder), store.put(folder)
    assert a.path == b.path and b.copied and _entries(store) == [a.path.name]


def test_the_stamp_is_part_of_the_content(store: AdapterStore, folder: Path, tmp_path: Path) -> None:
    """Same weights, different declared bases: two copies (one tenant's stamp never decides another's admission)."""
    twin = tmp_path / "twin"
    shutil.copytree(folder, twin)
    write_stamp(folder, "sha256:" + "1" * 64)
    write_stamp(twin, "sha256:" + "2" * 64)
    a, b = store.put(folder), store.put(twin)
    assert a.path != b.path
    assert json.loads((a.path / "tenantserve-base.json").read_text())["base_fingerprint"] == "sha256:" + "1" * 64


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json"])
def test_files_above_the_caps_are_refused_without_reading_them(tmp_path: Path, folder: Path, name: str) -> None:
    if name == "adapter_config.json":
        (folder / name).write_text(json.dumps({"r": 8, "pad": "x" * (1 << 20)}))  # above the 1 MiB default
        store = AdapterStore(tmp_path / "s")
    else:
        store = AdapterStore(tmp_path / "s", max_weights_bytes=1000)
    with pytest.raises(AdapterError) as info:
        store.put(folder, who="adapter 'a'")
    assert info.value.code == "file_too_large" and name in str(info.value) and "adapter 'a'" in str(info.value)
    assert not store.root.exists() or _entries(store) == []


def test_a_sparse_huge_weights_file_is_refused_by_its_size(tmp_path: Path, folder: Path) -> None:
    with open(folder / "adapter_model.safetensors", "r+b") as fh:
        fh.truncate(5 << 30)  # 5 GiB, sparse: nothing is written, nothing must be read
    store = AdapterStore(tmp_path / "s")
    start = time.monotonic()
    with pytest.raises(AdapterError) as info:
        store.put(folder)
    assert info.value.code == "file_too_large" and time.monotonic() - start < 2


def test_symlinked_files_are_refused_when_asked_and_followed_otherwise(store: AdapterStore, folder: Path,
                                                                      tmp_path: Path) -> None:
    victim = make_adapter(tmp_path / "tenant" / "victim", seed=7)
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.safetensors").symlink_to(victim / "adapter_model.safetensors")
    with pytest.raises(AdapterError) as info:
        store.put(folder, follow_symlinks=False)
    assert info.value.code == "file_symlink"
    with pytest.raises(AdapterError):
        store.digest(folder, follow_symlinks=False)
    followed = store.put(folder)  # the operator's registry (e.g. a hub cache of links): the target's bytes
    assert (followed.path / "adapter_model.safetensors").read_bytes() == \
        (victim / "adapter_model.safetensors").read_bytes()
    assert not (followed.path / "adapter_model.safetensors").is_symlink()


def test_a_folder_that_resolves_outside_the_allowed_root_is_refused(store: AdapterStore, folder: Path,
                                                                   tmp_path: Path) -> None:
    root = tmp_path / "tenant"
    link = root / "escape"
    link.symlink_to(make_adapter(tmp_path / "outside" / "x"))
    with pytest.raises(AdapterError) as info:
        store.put(link, inside=root)
    assert info.value.code == "path_escape"
    assert store.put(folder, inside=root).copied
    with pytest.raises(AdapterError) as info:
        store.put(root, inside=root)
    assert info.value.code == "path_escape"
    # a file linked out of the folder escapes too, even when links are followed; a link that stays inside is fine
    (folder / "adapter_model.safetensors").rename(folder / "weights.bin")
    (folder / "adapter_model.safetensors").symlink_to(folder / "weights.bin")
    assert store.put(folder, inside=root).path.parent == store.root
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.safetensors").symlink_to(tmp_path / "outside" / "x" / "adapter_model.safetensors")
    with pytest.raises(AdapterError) as info:
        store.put(folder, inside=root)
    assert info.value.code == "path_escape"


def test_a_fifo_or_directory_in_place_of_a_file_is_refused_without_hanging(store: AdapterStore, folder: Path) -> None:
    (folder / "adapter_config.json").unlink()
    os.mkfifo(folder / "adapter_config.json")
    result: list[BaseException | StoredAdapter] = []

    def put() -> None:
        try:
            result.append(store.put(folder))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    t = threading.Thread(target=put, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "put() hung on a FIFO"
    assert isinstance(result[0], AdapterError) and result[0].code == "file_not_regular"
    (folder / "adapter_config.json").unlink()
    (folder / "adapter_config.json").mkdir()
    with pytest.raises(AdapterError) as info:
        store.put(folder)
    assert info.value.code == "file_not_regular"


def test_missing_folders_and_pickled_weights_get_their_reasons(store: AdapterStore, tmp_path: Path,
                                                              folder: Path) -> None:
    with pytest.raises(AdapterError) as info:
        store.put(tmp_path / "nope")
    assert info.value.code == "path_missing"
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterError) as info:
        store.put(folder)
    assert info.value.code == "weights_format"


def test_concurrent_puts_of_the_same_content_share_one_complete_copy(tmp_path: Path, folder: Path) -> None:
    store = AdapterStore(tmp_path / "s")  # no cache: every thread copies and races for the rename
    results: list[StoredAdapter] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            results.append(store.put(folder))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 8
    assert len({r.path for r in results}) == 1 and _entries(store) == [results[0].path.name]
    assert fingerprint(results[0].path).value == results[0].fingerprint


def test_a_stored_copy_damaged_by_hand_is_replaced(store: AdapterStore, folder: Path) -> None:
    stored = store.put(folder)
    target = stored.path / "adapter_model.safetensors"
    os.chmod(stored.path, 0o755)
    os.chmod(target, 0o644)
    flip_byte(target)
    again = store.put(folder)
    assert again.path == stored.path and again.copied
    assert target.read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    assert any(n.startswith(".broken-") for n in _entries(store))


def test_an_unwritable_store_is_a_server_fault(tmp_path: Path, folder: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AdapterStoreError) as info:
        AdapterStore(blocker / "store").put(folder)
    assert info.value.http_status == 503 and info.value.code == "store_unwritable"


def test_store_location_and_cap_come_from_the_environment(tmp_path: Path) -> None:
    assert default_store_dir({"TENANTSERVE_ADAPTER_STORE": "/srv/s"}) == Path("/srv/s")
    assert default_store_dir({"TENANTSERVE_CACHE_DIR": "/c"}) == Path("/c/adapters")
    assert default_store_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/tenantserve/adapters")
    store = AdapterStore.default({"TENANTSERVE_ADAPTER_STORE": str(tmp_path), "TENANTSERVE_ADAPTER_MAX_BYTES": "5"})
    assert store.root == tmp_path and store.limits["adapter_model.safetensors"] == 5
    for bad in ("lots", "1e99", "0", "-1", "4 GiB"):
        with pytest.raises(AdapterStoreError) as info:
            AdapterStore.default({"TENANTSERVE_ADAPTER_MAX_BYTES": bad})
        assert (info.value.code, info.value.exit_code) == ("store_config", 2), bad
        assert f"TENANTSERVE_ADAPTER_MAX_BYTES={bad!r}" in str(info.value)


@pytest.mark.parametrize("bad", ["lots", "0", "-1"])
def test_check_with_an_unusable_max_bytes_is_one_line_and_exit_2(tmp_path: Path, bad: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """README: ``store_config`` is exit 2, nothing judged (it was exit 3; 0 or -1 refused every adapter instead)."""
    from click.testing import CliRunner

    from tenantserve.cli import main
    base = make_base(tmp_path / "base")
    write_stamp(make_adapter(tmp_path / "a"), fingerprint(base).value)
    path = tmp_path / "adapters.yaml"
    path.write_text(json.dumps({"base": {"name": "tiny", "path": "base"}, "security": {"auth": False},
                                "tenants": [{"id": "t", "adapters": [{"name": "a", "path": "a"}]}]}))
    monkeypatch.setenv("TENANTSERVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TENANTSERVE_ADAPTER_MAX_BYTES", bad)
    monkeypatch.setenv("TENANTSERVE_ADAPTER_STORE", str(tmp_path / "store"))
    out = CliRunner().invoke(main, ["check", "--registry", str(path)])
    assert out.exit_code == 2, out.output
    assert "[store_config]" in out.output and "Traceback" not in out.output


# -- copy, then admit the copy ---------------------------------------------------------------------------------------


def _registry(tmp_path: Path, base: Path, **adapter: object) -> Registry:
    data = {"base": {"name": "tiny", "path": str(base)}, "engine": {"max_loras": 2, "max_lora_rank": 8},
            "tenants": [{"id": "t", "adapters": [{"name": "a", "path": "tenant/a", **adapter}]}]}
    return Registry.parse(json.dumps(data), root=tmp_path)


def test_admission_runs_on_the_copy_and_a_pinned_fingerprint_refuses_changed_files(
        tmp_path: Path, store: AdapterStore, folder: Path, cache: FingerprintCache) -> None:
    base = make_base(tmp_path / "base")
    write_stamp(folder, fingerprint(base).value)
    reg = _registry(tmp_path, base)
    stored, admission = admit_stored(reg, reg.adapters()[0][1], store, max_lora_rank=8, cache=cache)
    assert admission.rank == 8 and admission.base_verified and stored.path.parent == store.root

    pinned = _registry(tmp_path, base, fingerprint=stored.fingerprint)
    assert admit_stored(pinned, pinned.adapters()[0][1], store, max_lora_rank=8, cache=cache)[0].path == stored.path
    make_adapter(folder, rank=16, seed=3)  # a tenant swaps in another adapter after admission
    entries = _entries(store)
    with pytest.raises(AdapterError) as info:
        admit_stored(pinned, pinned.adapters()[0][1], store, max_lora_rank=8, cache=cache)
    assert info.value.code == "adapter_changed" and "'a'" in str(info.value)
    assert _entries(store) == entries  # the changed files were not copied
    with pytest.raises(AdapterError) as info:  # unpinned: the new files are admitted like any others
        admit_stored(reg, reg.adapters()[0][1], store, max_lora_rank=8, cache=cache)
    assert info.value.code == "rank_too_high"
    make_adapter(folder, rank=8)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError) as info:  # refusals name the tenant's folder, not the store's copy
        admit_stored(reg, reg.adapters()[0][1], store, max_lora_rank=8, cache=cache)
    assert info.value.code == "weights_missing" and str(folder) in str(info.value)
    assert str(store.root) not in str(info.value)


def test_launch_serves_store_copies_and_a_changed_pinned_adapter_fails_alone(
        tmp_path: Path, store: AdapterStore, cache: FingerprintCache) -> None:
    """The launch-time half of issue 10 item 4: a rank-16 file swapped into a pinned adapter's folder is refused
    (``adapter_changed``) instead of silently raising ``--max-lora-rank`` for every tenant."""
    from tenantserve.engine.launch import plan_launch

    base = make_base(tmp_path / "base")
    stamp = fingerprint(base).value
    for name in ("a", "b"):
        write_stamp(make_adapter(tmp_path / "tenant" / name, seed=ord(name)), stamp)
    pin = store.digest(tmp_path / "tenant" / "a")
    data = {"base": {"name": "tiny", "path": str(base)}, "engine": {"max_loras": 2},
            "security": {"auth": False},
            "tenants": [{"id": "t", "adapters": [{"name": "a", "path": "tenant/a", "fingerprint": pin},
                                                 {"name": "b", "path": "tenant/b"}]}]}
    reg = Registry.parse(json.dumps(data), root=tmp_path)
    plan = plan_launch(reg, device="cpu", cache=cache, store=store)
    modules = {m["name"]: m["path"] for m in map(json.loads, plan.argv[plan.argv.index("--lora-modules") + 1:][:2])}
    assert modules == {"a": str(store.path_for(pin)), "b": str(store.put(tmp_path / "tenant" / "b").path)}
    assert plan.knobs.max_lora_rank == 8 and not plan.refused

    write_stamp(make_adapter(tmp_path / "tenant" / "a", rank=16, seed=3), stamp)
    plan = plan_launch(reg, device="cpu", cache=cache, store=store)
    assert [(r.adapter, r.code) for r in plan.refused] == [("a", "adapter_changed")]
    assert plan.knobs.max_lora_rank == 8  # derived from the admitted adapters only
    assert '"name": "a"' not in " ".join(plan.argv) and '"name": "b"' in " ".join(plan.argv)


def test_an_unwritable_store_stops_the_launch_instead_of_refusing_every_adapter(
        tmp_path: Path, cache: FingerprintCache) -> None:
    from tenantserve.engine.launch import plan_launch

    base = make_base(tmp_path / "base")
    write_stamp(make_adapter(tmp_path / "tenant" / "a"), fingerprint(base).value)
    data = {"base": {"name": "tiny", "path": str(base)}, "security": {"auth": False},
            "tenants": [{"id": "t", "adapters": [{"name": "a", "path": "tenant/a"}]}]}
    (tmp_path / "blocker").write_text("")
    with pytest.raises(AdapterStoreError) as info:
        plan_launch(Registry.parse(json.dumps(data), root=tmp_path), device="cpu", cache=cache,
                    store=AdapterStore(tmp_path / "blocker" / "store", cache=cache))
    assert info.value.exit_code == 3 and "adapter store" in str(info.value)
