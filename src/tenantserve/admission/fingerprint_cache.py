"""The fingerprint cache: file digests remembered by (path, size, mtime, ctime, inode), in one JSON file.

Where: ``$TENANTSERVE_CACHE_DIR/fingerprints.json``, else ``$XDG_CACHE_HOME/tenantserve/``, else
``~/.cache/tenantserve/``. Written atomically (temp file + rename), so concurrent writers (launcher, sidecar,
``check``) never leave a torn file; a lost update only costs a re-hash. Entries whose file changed within
``RACY_WINDOW_NS`` of being hashed are not trusted (the "racy clean" problem: a write in the same timestamp tick
would keep the same mtime), so they are hashed again until the file is older than that.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tenantserve.registry.schema import atomic_write_text
from tenantserve.settings import CACHE_DIR_ENV

CACHE_FILE = "fingerprints.json"
RACY_WINDOW_NS = 2_000_000_000
MAX_ENTRIES = 20_000
_FORMAT = 1


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the cache lives (module docstring), from ``environ`` (default ``os.environ``); nothing is created."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "tenantserve"
    return Path.home() / ".cache" / "tenantserve"


@dataclass(frozen=True)
class FileKey:
    """What a stat says about a file; a digest is reused only while all of it is unchanged."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileKey:
        """The key of ``path``'s real file (symlinks resolved). Raises ``OSError`` when it cannot be stat'ed."""
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def stat_values(self) -> list[int]:
        """The stat fields the cache file records (its ``stat`` entry): size in bytes, mtime and ctime in ns, inode,
        device."""
        return [self.size, self.mtime_ns, self.ctime_ns, self.inode, self.device]


class FingerprintCache:
    """Digests by file key. ``load`` reads the file once; ``store`` merges into it and rewrites it atomically."""

    def __init__(self, directory: Path, *, racy_window_ns: int = RACY_WINDOW_NS) -> None:
        self.path = Path(directory) / CACHE_FILE
        self.racy_window_ns = racy_window_ns
        self._entries: dict[str, dict] = {}

    @classmethod
    def default(cls) -> FingerprintCache:
        """The user's cache (``default_cache_dir``), loaded. Never raises: a missing or corrupt file is empty."""
        return cls(default_cache_dir()).load()

    def load(self) -> FingerprintCache:
        """Read the cache file (missing or corrupt: start empty); returns self."""
        self._entries = self._read()
        return self

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # missing or corrupt: a cache may always be rebuilt
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("files"), dict):
            return {}
        return data["files"]

    def lookup(self, key: FileKey) -> str | None:
        """The remembered sha256 (hex) for ``key``; None when unknown, changed, or hashed too soon after a change."""
        entry = self._entries.get(key.path)
        if not isinstance(entry, dict) or entry.get("stat") != key.stat_values():
            return None
        if max(key.mtime_ns, key.ctime_ns) + self.racy_window_ns > int(entry.get("hashed_at_ns", 0)):
            return None
        digest = entry.get("sha256")
        return digest if isinstance(digest, str) else None

    def store(self, digests: dict[FileKey, str], *, hashed_at_ns: int | None = None) -> None:
        """Remember digests (``hashed_at_ns``: when reading began; default now) and write the cache file. Never
        raises for the file: an unwritable cache is skipped (the next run hashes again)."""
        now = time.time_ns() if hashed_at_ns is None else hashed_at_ns
        merged = self._read()
        merged.update(self._entries)
        for key, digest in digests.items():
            merged[key.path] = {"stat": key.stat_values(), "sha256": digest, "hashed_at_ns": now}
        merged = {p: e for p, e in merged.items() if os.path.exists(p)}
        if len(merged) > MAX_ENTRIES:
            keep = sorted(merged, key=lambda p: merged[p].get("hashed_at_ns", 0))[-MAX_ENTRIES:]
            merged = {p: merged[p] for p in keep}
        self._entries = merged
        try:
            atomic_write_text(self.path, json.dumps({"format": _FORMAT, "files": merged}, separators=(",", ":")))
        except OSError:
            pass  # a read-only home must not stop a launch; the next check hashes again
