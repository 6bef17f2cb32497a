from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tenantserve.admission.fingerprint import fingerprint, manifest_digest, model_files
from tenantserve.admission.fingerprint_cache import FileKey, FingerprintCache, default_cache_dir
from tenantserve.errors import FingerprintError
from tests.lora_corpus import flip_byte, make_base


def _age(directory: Path, seconds: int = 60) -> None:
    """Make files look older than the cache's racy window (their ctime still moves: tests use a 0 window)."""
    past = time.time() - seconds
    for p in directory.iterdir():
        os.utime(p, (past, past))


def test_digests_are_the_hub_lfs_oids_and_the_fingerprint_is_reproducible_with_sha256sum(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", shards=3)
    fp = fingerprint(base)
    names = [f.name for f in fp.files]
    assert names == sorted(names) and "README.md" not in names
    assert {"config.json", "tokenizer_config.json", "generation_config.json"} <= set(names)
    assert sum(n.endswith(".safetensors") for n in names) == 3
    for f in fp.files:
        assert f.sha256 == hashlib.sha256((base / f.name).read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        out = subprocess.run(f"sha256sum {' '.join(names)} | LC_ALL=C sort -k2 | sha256sum", shell=True, cwd=base,
                             capture_output=True, text=True, check=True).stdout.split()[0]
        assert fp.value == "sha256:" + out


def test_any_changed_byte_changes_the_fingerprint_and_diff_names_the_file(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", shards=2)
    before = fingerprint(base)
    flip_byte(base / "model-00002-of-00002.safetensors")
    after = fingerprint(base)
    assert after.value != before.value
    changes = after.diff(before.manifest())
    assert [c.name for c in changes] == ["model-00002-of-00002.safetensors"]
    (base / "config.json").unlink()
    (base / "tokenizer.json").write_text("{}")
    names = {c.name: (c.pinned is None, c.actual is None) for c in fingerprint(base).diff(before.manifest())}
    assert names["config.json"] == (False, True) and names["tokenizer.json"] == (True, False)


def test_manifest_digest_is_order_independent_and_content_sensitive() -> None:
    a = {"b.safetensors": "1" * 64, "config.json": "2" * 64}
    assert manifest_digest(a) == manifest_digest(dict(reversed(list(a.items()))))
    assert manifest_digest(a) != manifest_digest({**a, "config.json": "3" * 64})
    assert manifest_digest(a) != manifest_digest({"c.safetensors": "1" * 64, "config.json": "2" * 64})


def test_cached_recheck_reads_nothing_and_a_changed_file_is_read_again(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", shards=2)
    _age(base)
    cache = FingerprintCache(tmp_path / "cache", racy_window_ns=0).load()
    cold = fingerprint(base, cache=cache)
    assert cold.bytes_hashed == cold.total_bytes and cold.files_cached == 0
    warm = fingerprint(base, cache=FingerprintCache(tmp_path / "cache", racy_window_ns=0).load())  # from disk
    assert warm.value == cold.value and warm.bytes_hashed == 0 and warm.files_cached == len(cold.files)
    shard = base / "model-00001-of-00002.safetensors"
    flip_byte(shard)  # same size; mtime/ctime/inode move
    again = fingerprint(base, cache=cache)
    assert again.bytes_hashed == shard.stat().st_size and again.value != cold.value
    assert [c.name for c in again.diff(cold.manifest())] == [shard.name]


def test_same_size_rewrite_with_restored_mtime_is_detected(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    cache = FingerprintCache(tmp_path / "cache").load()  # default 2 s window
    first = fingerprint(base, cache=cache)
    weights = base / "model.safetensors"
    st = weights.stat()
    flip_byte(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: ctime still moved
    assert fingerprint(base, cache=cache).value != first.value


def test_digests_of_files_changed_just_before_hashing_are_not_trusted(tmp_path: Path) -> None:
    """A write in the same timestamp tick as the hash would keep the stat: such entries are re-hashed."""
    f = tmp_path / "config.json"
    f.write_text("{}")
    key = FileKey.of(f)
    changed = max(key.mtime_ns, key.ctime_ns)
    cache = FingerprintCache(tmp_path / "c", racy_window_ns=2_000_000_000)
    cache.store({key: "a" * 64}, hashed_at_ns=changed + 1_000_000_000)  # hashed 1 s after the change
    assert cache.lookup(key) is None
    cache.store({key: "a" * 64}, hashed_at_ns=changed + 3_000_000_000)
    assert cache.lookup(key) == "a" * 64
    assert FingerprintCache(tmp_path / "c").load().lookup(key) == "a" * 64  # persisted
    f.write_text("{ }")
    assert cache.lookup(FileKey.of(f)) is None


def test_cache_file_is_json_written_atomically_and_a_corrupt_one_is_ignored(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    cache = FingerprintCache(tmp_path / "c").load()
    fingerprint(base, cache=cache)
    data = json.loads((tmp_path / "c" / "fingerprints.json").read_text())
    assert str((base / "model.safetensors").resolve()) in data["files"]
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "c" / "fingerprints.json").write_text("{half")
    assert fingerprint(base, cache=FingerprintCache(tmp_path / "c").load()).bytes_hashed > 0


def test_cache_location_env_override() -> None:
    assert default_cache_dir({"TENANTSERVE_CACHE_DIR": "/x/y"}) == Path("/x/y")
    assert default_cache_dir({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/tenantserve")
    assert default_cache_dir({}) == Path.home() / ".cache" / "tenantserve"


def test_missing_or_empty_directories_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError) as info:
        model_files(tmp_path / "nope")
    assert info.value.code == "path_missing"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FingerprintError) as info:
        fingerprint(tmp_path / "empty")
    assert info.value.code == "no_model_files"


def test_threads_give_the_same_result_as_one(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", shards=4)
    seen: list[int] = []
    one = fingerprint(base, workers=1)
    many = fingerprint(base, workers=4, on_progress=seen.append)
    assert one.value == many.value and sum(seen) == many.total_bytes
