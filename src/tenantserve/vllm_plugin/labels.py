"""Adapter names -> bounded label values.

Names the registry knows are kept; anything else (a runtime load nobody registered, a resolver's name) becomes
``"other"``; vLLM's warm-up dummies (``warmup_N`` at ``/not/a/real/path``) are not counted at all. The sidecar
onboards adapters at runtime by writing the registry, so an unknown name triggers a re-read of the registry file
when its mtime changed (at most once per ``min_interval`` seconds).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tenantserve.metrics import bounded_label

#: The path vLLM gives its warm-up dummy adapters (lora/… model runner mixin); real adapters never have it.
WARMUP_PATH = "/not/a/real/path"


def is_warmup(name: str, path: str | None) -> bool:
    """vLLM's dummy adapters used for warm-up and profiling: identified by their fake path, not only the name,
    because a tenant may legitimately name an adapter ``warmup_1``."""
    return path == WARMUP_PATH and name.startswith("warmup_")


def read_registry_names(path: Path) -> frozenset[str]:
    """The adapter names of a registry file (the only I/O here)."""
    from tenantserve.registry import Registry

    return frozenset(a.name for _, a in Registry.load(path).adapters())


class AdapterLabels:
    """Maps adapter names to label values; cheap per call (a dict lookup once a name was seen)."""

    def __init__(
        self,
        known: frozenset[str],
        *,
        source: Path | None = None,
        reader: Callable[[Path], frozenset[str]] = read_registry_names,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 5.0,
    ) -> None:
        self.known = known
        self._source = source
        self._reader = reader
        self._clock = clock
        self._min_interval = min_interval
        self._mtime = self._stat()
        self._last_check = clock()
        self._cache: dict[str, str] = {}

    @classmethod
    def from_registry(cls, path: Path | None) -> AdapterLabels:
        """Known names from the registry file; none (everything is ``"other"``) when there is no readable file."""
        if path is None:
            return cls(frozenset())
        try:
            return cls(read_registry_names(path), source=path)
        except Exception:  # a broken registry must not stop the engine; labels fall back to "other"
            return cls(frozenset(), source=path)

    def label(self, name: str, path: str | None = None) -> str | None:
        """The label for an adapter, or ``None`` for a warm-up dummy (not counted)."""
        if is_warmup(name, path):
            return None
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        if name not in self.known:
            self._maybe_reload()
        value = bounded_label(name, self.known)
        if value == name:  # "other" is not cached: the name may be onboarded later
            self._cache[name] = value
        return value

    def _stat(self) -> float | None:
        if self._source is None:
            return None
        try:
            return os.stat(self._source).st_mtime
        except OSError:
            return None

    def _maybe_reload(self) -> None:
        if self._source is None or self._clock() - self._last_check < self._min_interval:
            return
        self._last_check = self._clock()
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return
        try:
            self.known = self._reader(self._source)
            self._mtime = mtime
        except Exception:  # half-edited by hand: keep the names we had, try again after the next change
            pass
