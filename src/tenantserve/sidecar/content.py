"""What each registered adapter is served from: its copy in the adapter store, while its folder still holds it.

The engine loads adapters from ``AdapterStore`` copies (``tenantserve.admission.store``), so a tenant who rewrites
its folder after admission changes nothing that is served. The sidecar still has to *notice*: every reconcile pass
re-fingerprints each registered adapter's folder (a stat per unchanged file, through the fingerprint cache) and
compares it with the content that was admitted:

- the registry's ``fingerprint`` (recorded at runtime onboarding), else
- the content this sidecar loaded for it, else the copy the engine already serves (an adapter of the launch), else
- nothing yet: the folder's current content is copied, and becomes the expected one once admitted and loaded.

A folder that no longer holds that content is ``adapter_changed`` (a missing one ``path_missing``): the reconciler
unloads the adapter and shows it ``failed``; restoring the files brings it back. To serve new files on purpose,
offboard and onboard the adapter again (or change its ``fingerprint`` in the registry).
"""

from __future__ import annotations

import os
from pathlib import Path

from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.store import AdapterStore, StoredAdapter, changed_error
from tenantserve.registry.schema import AdapterSpec, Registry
from tenantserve.sidecar.ownership import tenant_folder


class ServedContent:
    """Resolves registered adapters to store copies; remembers what was loaded (in memory, per name and folder)."""

    def __init__(self, store: AdapterStore, adapters_root: Path) -> None:
        self.store = store
        self.adapters_root = adapters_root
        self._loaded: dict[str, tuple[Path, str]] = {}  # name -> (folder, fingerprint) last served

    @classmethod
    def default(cls, adapters_root: Path) -> ServedContent:
        """The store named by the environment, with the user's fingerprint cache (reads it: call from a thread)."""
        return cls(AdapterStore.default(cache=FingerprintCache.default()), adapters_root)

    def scope(self, tenant_id: str, folder: Path) -> Path | None:
        """The tenant's folder when the adapter lies in it (its files must stay inside); None for an adapter the
        operator registered elsewhere (trusted: links there are followed, e.g. a hub cache)."""
        top = tenant_folder(self.adapters_root, tenant_id)
        real, root = os.path.realpath(folder), os.path.realpath(top)
        return top if os.path.commonpath([real, root]) == root else None  # the folder itself too: checked on open

    def put(self, registry: Registry, tenant_id: str, adapter: AdapterSpec) -> StoredAdapter:
        """Copy a folder into the store for onboarding (blocking I/O: run it in a thread)."""
        folder = registry.adapter_path(adapter)
        return self.store.put(folder, who=f"adapter '{adapter.name}'", inside=self.scope(tenant_id, folder))

    def resolve(self, registry: Registry, tenant_id: str, adapter: AdapterSpec, served: str | None) -> Path:
        """The store copy to serve ``adapter`` from, checked against its folder (blocking: run it in a thread).

        ``served``: the path the engine lists for it now. Raises ``AdapterError`` (``adapter_changed``,
        ``path_missing``, ...) when the folder no longer holds the expected content."""
        folder = registry.adapter_path(adapter)
        who = f"adapter '{adapter.name}'"
        inside = self.scope(tenant_id, folder)
        expected = self.expected(adapter, folder, served)
        if expected is None:
            stored = self.store.put(folder, who=who, inside=inside)
            return stored.path
        actual = self.store.digest(folder, who=who, inside=inside)
        if actual != expected:
            raise changed_error(who, folder, expected, actual)
        path = self.store.path_for(expected)
        if served == str(path):
            self._loaded[adapter.name] = (folder, expected)
        elif not path.is_dir():  # the store was cleared: the folder still holds the content, copy it again
            stored = self.store.put(folder, who=who, inside=inside)
            if stored.fingerprint != expected:
                raise changed_error(who, folder, expected, stored.fingerprint)
        return path

    def expected(self, adapter: AdapterSpec, folder: Path, served: str | None) -> str | None:
        """The content ``adapter`` must still have: pinned, else last loaded here, else what the engine serves."""
        if adapter.fingerprint:
            return adapter.fingerprint
        loaded = self._loaded.get(adapter.name)
        if loaded is not None and loaded[0] == folder:
            return loaded[1]
        serving = self.store.fingerprint_of(served) if served is not None else None
        if serving is not None:  # held to it from now on, also once it is withdrawn and no longer served
            self._loaded[adapter.name] = (folder, serving)
        return serving

    def loaded(self, name: str, folder: Path, path: Path | str) -> None:
        """Remember that ``name`` (from ``folder``) is served from the store copy ``path``."""
        fingerprint = self.store.fingerprint_of(path)
        if fingerprint is not None:
            self._loaded[name] = (folder, fingerprint)

    def forget(self, name: str) -> None:
        """``name`` was offboarded: whatever is onboarded under it next is judged afresh."""
        self._loaded.pop(name, None)

    def retain(self, names: set[str]) -> None:
        """Forget what was loaded for every adapter not in ``names`` (no longer registered)."""
        for name in set(self._loaded) - names:
            del self._loaded[name]
