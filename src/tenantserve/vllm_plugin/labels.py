"""Adapter names -> bounded label values, following the registry at once.

Names the registry knows are kept; anything else (a runtime load nobody registered, a resolver's name) becomes
``"other"``, so the label set is bounded by the registry; vLLM's warm-up dummies (``warmup_N`` at
``/not/a/real/path``) are not counted at all. The registry file is re-read as soon as its (inode, size, mtime in ns)
changes: ``refresh`` is one stat, called by EngineCore once per scheduler step and by any process that meets an
unknown name, so an adapter registered by the sidecar (which writes the registry before it loads the adapter) or by
a hand edit has its series at zero (through ``on_new``) from the next step on, and its first load counts under its
own name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tenantserve.vllm_plugin.metrics import OTHER

#: The path vLLM gives its warm-up dummy adapters (lora/… model runner mixin); real adapters never have it.
WARMUP_PATH = "/not/a/real/path"

FileId = tuple[int, int, int]


def is_warmup(name: str, path: str | None) -> bool:
    """vLLM's dummy adapters used for warm-up and profiling: identified by their fake path, not only the name,
    because a tenant may legitimately name an adapter ``warmup_1``."""
    return path == WARMUP_PATH and name.startswith("warmup_")


def read_registry_names(path: Path) -> frozenset[str]:
    """The adapter names of a registry file (the only I/O here besides ``os.stat``)."""
    from tenantserve.registry.schema import Registry

    return frozenset(a.name for _, a in Registry.load(path, check_paths=False).adapters())


def file_id(path: Path) -> FileId | None:
    """(inode, size, mtime in ns) of a file, or None: an atomic rename changes the inode, an edit the rest."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class AdapterLabels:
    """Maps adapter names to label values; a dict lookup per call for a known name."""

    def __init__(
        self,
        known: frozenset[str],
        *,
        source: Path | None = None,
        reader: Callable[[Path], frozenset[str]] = read_registry_names,
        stat: Callable[[Path], FileId | None] = file_id,
    ) -> None:
        self.known = known
        self._source = source
        self._reader = reader
        self._stat = stat
        self._seen = stat(source) if source is not None else None
        #: Called with the names a refresh found newly registered (the plugin creates their series at zero).
        self.on_new: Callable[[list[str]], None] | None = None

    @classmethod
    def from_registry(cls, path: Path | None) -> AdapterLabels:
        """Known names from the registry file; none when there is no readable file (it is re-read once it is)."""
        if path is None:
            return cls(frozenset())
        try:
            return cls(read_registry_names(path), source=path)
        except Exception:  # a broken registry must not stop the engine; known names come with its next good version
            labels = cls(frozenset(), source=path)
            labels._seen = None
            return labels

    def label(self, name: str, path: str | None = None) -> str | None:
        """The label for an adapter, or ``None`` for a warm-up dummy (not counted)."""
        if is_warmup(name, path):
            return None
        if name not in self.known:
            self.refresh()
        return name if name in self.known else OTHER

    def refresh(self) -> frozenset[str]:
        """Re-read the registry if the file changed; return the names it newly registers (also given to
        ``on_new``). A registry that fails to load keeps the names already known and is retried on its next change."""
        if self._source is None:
            return frozenset()
        seen = self._stat(self._source)
        if seen is None or seen == self._seen:
            return frozenset()
        self._seen = seen
        try:
            names = self._reader(self._source)
        except Exception:  # half-edited by hand: keep the names we had
            return frozenset()
        new = names - self.known
        self.known = names
        if new and self.on_new is not None:
            self.on_new(sorted(new))
        return new
