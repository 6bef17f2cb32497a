"""The registry file as the sidecar's durable state: read fresh, mutate, validate, write atomically.

Every change re-reads the file (an operator may have edited it), applies one mutation, re-validates the whole registry
and writes it with ``Registry.save`` (temp file, fsync, rename, fsync of the directory), so a sidecar killed at any
moment leaves either the old or the new file. Writes are serialized by one lock, and against other processes
(``tenantserve keys``, ``fingerprint --pin``) by the registry's file lock; operations on one adapter or tenant
are serialized by a lock per name, which the reconciler also takes before touching that adapter. A broken edit is
remembered (``error``, logged once per distinct error) and the last good registry kept to show beside it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from tenantserve.errors import RegistryError
from tenantserve.registry.schema import Registry, RegistryLock
from tenantserve.sidecar.errors import RegistryWriteError

T = TypeVar("T")
log = logging.getLogger("tenantserve.sidecar")


class RegistryStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._write_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        #: Bumped by every write through this store: a reader holding an older registry knows to re-read.
        self.generation = 0
        #: The file's current error (``path:line: key: message``), None while it is valid; and the last valid one.
        self.error: str | None = None
        self.last_good: Registry | None = None

    def lock(self, key: str) -> asyncio.Lock:
        """The lock for one adapter (``adapter:NAME``) or tenant (``tenant:ID``)."""
        return self._locks.setdefault(key, asyncio.Lock())

    def load(self) -> Registry:
        """The registry as it is on disk now; paths are not required to exist (admission checks them).

        Raises ``RegistryError`` for a broken file, and remembers it (``error``; one log line per distinct error)
        until a load succeeds again; ``last_good`` is the last registry that loaded."""
        try:
            registry = Registry.load(self.path, check_paths=False)
        except RegistryError as exc:
            if exc.message != self.error:
                log.warning("registry %s is invalid; the sidecar keeps serving the last good registry: %s",
                            self.path, exc.message)
            self.error = exc.message
            raise
        if self.error is not None:
            log.warning("registry %s is valid again", self.path)
        self.error, self.last_good = None, registry
        return registry

    def check(self) -> tuple[Registry | None, str | None]:
        """(the registry to show, the current error): the file now, or the last good one and why the file is not
        used. Blocking: run in a thread."""
        try:
            return self.load(), None
        except RegistryError as exc:
            return self.last_good, exc.message

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
