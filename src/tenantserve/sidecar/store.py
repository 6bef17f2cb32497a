"""The registry file as the sidecar's durable state: read fresh, mutate, validate, write atomically.

Every change re-reads the file (an operator may have edited it), applies one mutation, re-validates the whole registry
and writes it with ``Registry.save`` (temp file, fsync, rename, fsync of the directory), so a sidecar killed at any
moment leaves either the old or the new file. Writes are serialized by one lock, and against other processes
(``tenantserve keys``, ``fingerprint --pin``) by the registry's file lock; operations on one adapter or tenant
are serialized by a lock per name, which the reconciler also takes before touching that adapter.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from tenantserve.errors import RegistryError
from tenantserve.registry import Registry, RegistryLock
from tenantserve.sidecar.errors import RegistryWriteError

T = TypeVar("T")

#: What identifies one version of the file on disk: a rename (atomic save, ConfigMap swap) changes the inode.
Stamp = tuple[int, int, int] | None


class RegistryStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._write_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        #: Bumped by every write through this store: a reader holding an older registry knows to re-read.
        self.generation = 0

    def lock(self, key: str) -> asyncio.Lock:
        """The lock for one adapter (``adapter:NAME``) or tenant (``tenant:ID``)."""
        return self._locks.setdefault(key, asyncio.Lock())

    def load(self) -> Registry:
        """The registry as it is on disk now; paths are not required to exist (admission checks them)."""
        return Registry.load(self.path, check_paths=False)

    def stamp(self) -> Stamp:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def mutate(self, change: Callable[[Registry], T]) -> T:
        """Apply ``change`` to the current registry and persist the result; ``change`` raises to abort."""
        async with self._write_lock:
            lock = RegistryLock(self.path)  # other processes (``tenantserve keys``) write the same file
            try:
                await asyncio.to_thread(lock.acquire)
            except RegistryError as exc:
                raise RegistryWriteError(exc.message, code=exc.code) from None
            try:
                registry = await asyncio.to_thread(self.load)
                result = change(registry)
                checked = validated(registry)
                try:
                    await asyncio.to_thread(checked.save, self.path)
                except OSError as exc:
                    raise RegistryWriteError(f"cannot write the registry {self.path}: {exc.strerror or exc}") from None
                finally:
                    self.generation += 1
                return result
            finally:
                lock.release()


def validated(registry: Registry) -> Registry:
    """Re-run every registry rule on an in-memory change (list appends bypass pydantic's assignment checks)."""
    try:
        fresh = Registry.model_validate(registry.model_dump())
    except ValidationError as exc:
        msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise RegistryError(f"the change would make the registry invalid: {msg}") from None
    fresh._root = registry.root
    fresh._source = registry.source
    return fresh
