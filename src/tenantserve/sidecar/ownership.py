"""Which adapter folders a tenant may onboard at runtime: only its own, ``<adapters root>/<tenant id>/...``.

Tenants write their adapter folders themselves, so a folder may hold symlinks to another tenant's weights, or sit
inside another tenant's registered adapter. The rule, applied by the sidecar before admission reads anything:

- a requested path is relative to the tenant's folder ``<root>/<tenant>``; an absolute one must lie inside it;
- the adapter directory and every entry under it (``adapter_config.json``, ``adapter_model.safetensors``,
  ``tenantserve-base.json``, anything else vLLM might open), symlinks followed, resolve inside
  ``realpath(<root>/<tenant>)`` (else ``path_escape``: symlinks that stay inside are fine);
- no two tenants' adapter directories are the same, or one inside the other (else 409 ``path_owned``);
- an adapter directory is a subfolder of the tenant's folder, never the folder itself (else ``path_invalid``).

``check`` is the pure core (paths already resolved); ``inspect`` is the one function that reads the disk.
Adapters the operator wrote into the registry by hand outside the tenant's folder are trusted and not checked.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tenantserve.errors import AdapterError
from tenantserve.sidecar.errors import Conflict

#: Entries looked at under one adapter directory; a folder with more is refused (an adapter has a handful).
MAX_ENTRIES = 1000


class PathOwned(Conflict):
    """The directory is (or overlaps) an adapter directory registered to another tenant."""

    code = "path_owned"


def tenant_folder(root: Path, tenant: str) -> Path:
    """``<root>/<tenant>``: the only place the tenant's runtime-onboarded adapters may come from. Pure."""
    return Path(posixpath.normpath(os.path.join(os.path.abspath(root), tenant)))


def requested_dir(folder: Path, requested: str) -> Path:
    """Where ``requested`` points, lexically: relative to ``folder``, or as given if absolute. Pure (no symlinks
    followed); raises ``path_invalid`` for a NUL byte and ``path_escape`` for a path that leaves ``folder``."""
    if "\x00" in requested:
        raise AdapterError("adapter path contains a NUL byte", code="path_invalid")
    path = Path(posixpath.normpath(os.path.join(folder, requested)))
    if not _within(str(path), str(folder)):
        raise AdapterError(f"adapter path {requested} lies outside the tenant's folder {folder}", code="path_escape")
    return path


@dataclass(frozen=True)
class Layout:
    """What the disk says about one adapter directory: real paths, symlinks followed."""

    folder: str  # realpath of the tenant's folder
    directory: str  # realpath of the adapter directory
    entries: tuple[tuple[str, str], ...] = ()  # (path relative to the directory, its realpath)


def inspect(folder: Path, directory: Path) -> Layout:
    """Resolve the tenant folder, the adapter directory and every entry below it (``os.walk``, links not entered:
    a linked directory is itself an entry whose target is checked). Raises ``too_many_files`` past MAX_ENTRIES."""
    entries: list[tuple[str, str]] = []
    real_dir = os.path.realpath(directory)
    if os.path.isdir(real_dir) and _within(real_dir, os.path.realpath(folder)):
        for top, dirs, files in os.walk(directory, followlinks=False):
            for name in (*dirs, *files):
                full = os.path.join(top, name)
                entries.append((os.path.relpath(full, directory), os.path.realpath(full)))
                if len(entries) > MAX_ENTRIES:
                    raise AdapterError(f"adapter directory {directory} holds more than {MAX_ENTRIES} entries",
                                       code="too_many_files")
    return Layout(folder=os.path.realpath(folder), directory=real_dir, entries=tuple(entries))


def check(who: str, layout: Layout, others: Iterable[tuple[str, str]]) -> None:
    """Refuse a layout that leaves the tenant's folder (``path_escape``) or overlaps an adapter directory of another
    tenant (``PathOwned``). ``others``: (tenant id, realpath of its registered adapter directory). Pure."""
    if not _within(layout.directory, layout.folder):
        raise AdapterError(f"{who}: its directory resolves to {layout.directory}, outside the tenant's folder "
                           f"{layout.folder}", code="path_escape")
    for name, real in layout.entries:
        if not _within(real, layout.folder):
            raise AdapterError(f"{who}: {name} resolves to {real}, outside the tenant's folder {layout.folder}",
                               code="path_escape")
    for owner, theirs in others:
        if _within(layout.directory, theirs) or _within(theirs, layout.directory):
            raise PathOwned(f"{who}: directory {layout.directory} overlaps {theirs}, registered to tenant {owner}")
        for name, real in layout.entries:
            if _within(real, theirs):
                raise PathOwned(f"{who}: {name} resolves into {theirs}, registered to tenant {owner}")
    if layout.directory == layout.folder:
        raise AdapterError(f"{who}: {layout.directory} is the tenant's folder itself; an adapter lives in a "
                           "subfolder of it (e.g. <root>/<tenant>/<adapter>)", code="path_invalid")


def _within(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it (both absolute and normalized)."""
    return path == top or path.startswith(top.rstrip("/") + "/")
