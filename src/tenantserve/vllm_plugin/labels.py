"""Adapter names -> bounded label values, following the registry at once.

Names the registry knows are kept; anything else (a runtime load nobody registered, a resolver's name) becomes
``"other"`` (``registry.metric_labels``), so the label set is bounded by the registry; vLLM's warm-up dummies
(``warmup_N`` at ``/not/a/real/path``) are not counted at all. The registry file is followed by the one
``registry.watch.RegistryWatcher``: ``refresh`` is one stat, called by EngineCore once per scheduler step and by any
process that meets an unknown name, so an adapter registered by the sidecar (which writes the registry before it
loads the adapter) or by a hand edit has its series at zero (through ``on_new``) from the next step on, and its
first load counts under its own name. A registry that fails to load keeps the names already known.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tenantserve.registry.metric_labels import bounded_label
from tenantserve.registry.watch import RegistryWatcher

#: The path vLLM gives its warm-up dummy adapters (lora/… model runner mixin); real adapters never have it.
WARMUP_PATH = "/not/a/real/path"


def is_warmup(name: str, path: str | None) -> bool:
    """vLLM's dummy adapters used for warm-up and profiling: identified by their fake path, not only the name,
    because a tenant may legitimately name an adapter ``warmup_1``."""
    return path == WARMUP_PATH and name.startswith("warmup_")


def read_registry_names(path: Path) -> frozenset[str]:
    """The adapter names of a registry file (``RegistryError`` when it does not load)."""
    from tenantserve.registry.schema import Registry

    return frozenset(a.name for _, a in Registry.load(path, check_paths=False).adapters())


class AdapterLabels:
    """Maps adapter names to label values; a dict lookup per call for a known name."""

    def __init__(self, known: frozenset[str], *, watcher: RegistryWatcher[frozenset[str]] | None = None) -> None:
        self.known = known
        self._watcher = watcher
        #: Called with the names a refresh found newly registered (the plugin creates their series at zero).
        self.on_new: Callable[[list[str]], None] | None = None

    @classmethod
    def from_registry(cls, path: Path | None,
                      reader: Callable[[Path], frozenset[str]] = read_registry_names) -> AdapterLabels:
        """Known names from the registry file; none while there is no loadable file (it is read again when it
        changes). Never raises: a broken registry must not stop the engine, whatever ``reader`` raises."""
        if path is None:
            return cls(frozenset())
        watcher = RegistryWatcher(path, reader, errors=(Exception,))
        watcher.refresh()
        return cls(watcher.value or frozenset(), watcher=watcher)

    def label(self, name: str, path: str | None = None) -> str | None:
        """The label for an adapter, or ``None`` for a warm-up dummy (not counted)."""
        if is_warmup(name, path):
            return None
        if name not in self.known:
            self.refresh()
        return bounded_label(name, self.known)

    def refresh(self) -> frozenset[str]:
        """Re-read the registry if the file changed; return the names it newly registers (also given to
        ``on_new``). A registry that fails to load keeps the names already known and is retried on its next change."""
        watcher = self._watcher
        if watcher is None or not watcher.refresh() or watcher.error is not None or watcher.value is None:
            return frozenset()
        names = watcher.value
        new = names - self.known
        self.known = names
        if new and self.on_new is not None:
            self.on_new(sorted(new))
        return new
