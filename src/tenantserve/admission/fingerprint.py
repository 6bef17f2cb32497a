"""Content fingerprints of model and adapter directories, with a stat-keyed cache.

Each file that defines a model (weights, ``config.json``, tokenizer and generation config) is hashed with sha256 -
the digest the model hub shows as the file's LFS oid. The directory's fingerprint is the sha256 of its manifest in
``sha256sum`` format, sorted by name, so it can be reproduced without tenantserve::

    cd BASE && sha256sum FILES... | LC_ALL=C sort -k2 | sha256sum

Files are hashed in parallel (threads: hashlib releases the GIL) and remembered in a ``FingerprintCache`` keyed by
(path, size, mtime, ctime, inode): re-checking an unchanged 12.5 GiB model costs a stat per file, not a read.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tenantserve.admission.fingerprint_cache import FileKey, FingerprintCache
from tenantserve.errors import FingerprintError

#: Top-level files that define a model or an adapter (what vLLM reads). Anything else (README, .git, the stamp
#: file ``tenantserve stamp`` writes) is not.
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json",
    "config.json", "generation_config.json", "adapter_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
)
PREFIX = "sha256:"
_CHUNK = 4 << 20

Progress = Callable[[int], None]


@dataclass(frozen=True)
class FileDigest:
    """One file of a manifest: its name in the directory, its size in bytes, its sha256 (64 hex digits)."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileChange:
    """One file that differs between a pinned manifest and the files on disk."""

    name: str
    pinned: str | None  # None: the file is new
    actual: str | None  # None: the file is gone

    def describe(self) -> str:
        """One human phrase: the file, and its pinned and current digests (shortened)."""
        if self.actual is None:
            return f"{self.name} (missing; pinned {_short(self.pinned)})"
        if self.pinned is None:
            return f"{self.name} (not in the pin; now {_short(self.actual)})"
        return f"{self.name} (pinned {_short(self.pinned)}, now {_short(self.actual)})"


@dataclass(frozen=True)
class Fingerprint:
    """A directory's manifest and overall fingerprint, with how much work computing it took."""

    path: Path
    files: tuple[FileDigest, ...]
    value: str
    bytes_hashed: int
    files_cached: int

    @property
    def total_bytes(self) -> int:
        """Bytes of every file in the manifest."""
        return sum(f.size for f in self.files)

    def manifest(self) -> dict[str, str]:
        """File name -> sha256 (hex, no prefix), what ``manifest_digest`` and ``base.files`` hold."""
        return {f.name: f.sha256 for f in self.files}

    def diff(self, pinned: dict[str, str]) -> list[FileChange]:
        """Files whose digest differs from ``pinned`` (name -> sha256), including added and removed ones."""
        actual = self.manifest()
        names = sorted(set(actual) | set(pinned))
        return [FileChange(n, pinned.get(n), actual.get(n)) for n in names if pinned.get(n) != actual.get(n)]


def manifest_digest(manifest: dict[str, str]) -> str:
    """The overall fingerprint of a manifest (name -> sha256). Pure."""
    lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(manifest.items()))
    return PREFIX + hashlib.sha256(lines.encode("utf-8")).hexdigest()


def is_model_file(name: str) -> bool:
    """Is a top-level file of this name part of the model (``MODEL_FILE_PATTERNS``, not hidden)?"""
    return not name.startswith(".") and any(fnmatch.fnmatchcase(name, p) for p in MODEL_FILE_PATTERNS)


def model_files(directory: Path) -> list[Path]:
    """The files of ``directory`` that define the model, sorted by name; symlinks (hub caches) are followed."""
    if not directory.is_dir():
        raise FingerprintError(f"{directory}: not a directory", code="path_missing")
    files = sorted(p for p in directory.iterdir() if is_model_file(p.name) and p.is_file())
    if not files:
        raise FingerprintError(f"{directory}: no model files (weights, config.json, tokenizer)", code="no_model_files")
    return files


def sha256_file(path: Path, on_progress: Progress | None = None) -> str:
    """sha256 of a file, read in large chunks into one reused buffer (hashlib releases the GIL on big updates)."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            if on_progress is not None:
                on_progress(n)
    return digest.hexdigest()


def fingerprint(
    directory: Path,
    *,
    cache: FingerprintCache | None = None,
    workers: int | None = None,
    on_progress: Progress | None = None,
) -> Fingerprint:
    """Fingerprint a model or adapter directory; files unchanged since the cache saw them are not read."""
    directory = Path(directory)
    files = model_files(directory)
    keys: dict[Path, FileKey] = {}
    known: dict[Path, str] = {}
    for path in files:
        try:
            keys[path] = FileKey.of(path)
        except OSError as exc:
            raise FingerprintError(f"{path}: cannot stat: {exc.strerror}", code="unreadable") from None
        hit = cache.lookup(keys[path]) if cache is not None else None
        if hit is not None:
            known[path] = hit
            if on_progress is not None:
                on_progress(keys[path].size)
    todo = sorted((p for p in files if p not in known), key=lambda p: -keys[p].size)  # largest first: balance
    fresh: dict[Path, str] = {}
    started = time.time_ns()
    if todo:
        n = max(1, min(len(todo), workers or os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sha256") as pool:
            for path, digest in zip(todo, pool.map(lambda p: _hash(p, on_progress), todo)):
                fresh[path] = digest
        if cache is not None:
            cache.store({keys[p]: d for p, d in fresh.items()}, hashed_at_ns=started)
    digests = [FileDigest(p.name, keys[p].size, known.get(p) or fresh[p]) for p in files]
    return Fingerprint(
        path=directory,
        files=tuple(digests),
        value=manifest_digest({d.name: d.sha256 for d in digests}),
        bytes_hashed=sum(keys[p].size for p in todo),
        files_cached=len(known),
    )


def _hash(path: Path, on_progress: Progress | None) -> str:
    try:
        return sha256_file(path, on_progress)
    except OSError as exc:
        raise FingerprintError(f"{path}: cannot read: {exc.strerror}", code="unreadable") from None


def _short(digest: str | None) -> str:
    return (digest or "-").removeprefix(PREFIX)[:12]
