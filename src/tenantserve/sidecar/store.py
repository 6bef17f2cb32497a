"""The registry file as the sidecar's durable state: read fresh, mutate, validate, write atomically.

Every change goes through ``registry.update.update_registry``, the one path every writer uses: under the registry's
file lock (against ``tenantserve keys``, ``fingerprint --pin``), re-read the file (an operator may have edited it),
apply one mutation, re-validate the whole registry, write it atomically (temp file, fsync, rename, fsync of the
directory), so a sidecar killed at any moment leaves either the old or the new file; an unwritable or locked file is
``RegistryWriteError`` (503). Writes in this process are serialized by one lock; operations on one adapter or tenant
are serialized by a lock per name, which the reconciler also takes before touching that adapter. A broken edit is
remembered (``error``, logged once per distinct error) and the last good registry kept to show beside it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tenantserve.errors import Reason, RegistryError
from tenantserve.registry.schema import Registry
from tenantserve.registry.update import RegistryWriteError, update_registry

T = TypeVar("T")
log = logging.getLogger("tenantserve.sidecar")


class RegistryStore:
    """The sidecar's handle on the registry file at ``path``: every read and write of it in this process.

    Owns the in-process locks (one serializing writes; one per adapter or tenant name, ``lock``, taken by admin
    operations and the reconciler), the write ``generation`` (bumped by every write: a reader holding an older
    registry re-reads) and the file's current ``error`` beside the ``last_good`` registry. Cheap to construct;
    ``load`` and ``check`` do blocking I/O (run them in a thread), ``mutate`` runs its own in one.

    Raises ``RegistryError`` (the file, or the registry a change would make, is invalid) and ``RegistryWriteError``
    (503: the file cannot be written, or another writer holds its lock too long).
    """

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
            self._note(None, exc)
            raise
        self._note(registry, None)
        return registry

    def _note(self, registry: Registry | None, error: RegistryError | None) -> None:
        """Remember one read of the file: the registry, or its error (logged once per distinct error)."""
        if error is not None:
            if error.message != self.error:
                log.warning("registry %s is invalid; the sidecar keeps serving the last good registry: %s",
                            self.path, error.message)
            self.error = error.message
            return
        if self.error is not None:
            log.warning("registry %s is valid again", self.path)
        self.error, self.last_good = None, registry

    def check(self) -> tuple[Registry | None, str | None]:
        """(the registry to show, the current error): the file now, or the last good one and why the file is not
        used. Blocking: run in a thread."""
        try:
            return self.load(), None
        except RegistryError as exc:
            return self.last_good, exc.message

    async def mutate(self, change: Callable[[Registry], T]) -> T:
        """Apply ``change`` to the current registry and persist the result; ``change`` raises to abort.

        ``change`` runs in a worker thread, under the file lock: it must only edit the models. Raises
        ``RegistryError`` (the file or the change is invalid) and ``RegistryWriteError`` (503: unwritable, locked)."""
        async with self._write_lock:
            try:
                result = await asyncio.to_thread(update_registry, self.path, change, on_read=self._note)
            except RegistryWriteError as exc:
                if exc.code == Reason.REGISTRY_UNWRITABLE:  # a write was attempted: readers re-read to be sure
                    self.generation += 1
                raise
            self.generation += 1
            return result
