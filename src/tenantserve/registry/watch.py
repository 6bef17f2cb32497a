"""The registry file, followed as it changes: one identity of a file version, one watcher for every reader.

The middleware (in every API-server process), the vLLM plugin (in EngineCore) and the sidecar's reconciler all follow
the same file. ``FileState`` tells two versions apart: the mtime in nanoseconds, the size and the inode. Writers
replace the file atomically (``registry.schema.atomic_write_text``: a new inode each time, so a reader never sees
half a file); a hand edit in place changes the size or the mtime; nanoseconds, because a rewrite of the same size
within the same second keeps a float-second mtime unchanged (the plugin once compared that and missed it).

``RegistryWatcher`` is one ``os.stat`` per ``refresh()`` and reloads only when the state changed. A reload that fails
keeps the last good value: a half-edited file never takes away what was in force, and its next change is tried
again. Each caller builds its own value from the file (the middleware its access view, the plugin the adapter names)
and learns of a failure its own way (``error``, and ``on_error`` once per failed version). The sidecar only needs to
know *that* the file changed (``FileWatch``): its passes read the registry through its store, which keeps the last
good registry and shows the error in ``/status``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from tenantserve.errors import RegistryError, TenantserveError

T = TypeVar("T")

Stat = Callable[[Path], os.stat_result]


@dataclass(frozen=True)
class FileState:
    """One version of a file as ``os.stat`` sees it. Equal states: the same content, for writers that replace the
    file atomically or edit it in place (an edit that restores the size and the mtime to the nanosecond is not
    seen; no writer does that)."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


def file_state(path: Path, stat: Stat = os.stat) -> FileState | None:
    """The file's state now, or None when it cannot be stat'ed (missing, a directory on the way is unreadable)."""
    try:
        return FileState.of(stat(path))
    except OSError:
        return None


class FileWatch:
    """Remembers the state of one file between polls; ``changed()`` is one ``stat``."""

    def __init__(self, path: Path, *, stat: Stat = os.stat) -> None:
        self.path = Path(path)
        self._stat = stat
        #: At the last poll; None: the file could not be stat'ed (or was never polled).
        self.state: FileState | None = None
        self._polled = False

    def changed(self) -> bool:
        """Whether the file differs from the last poll (the first poll always says yes; a file that disappears or
        comes back is a change); the new state is remembered."""
        state = file_state(self.path, self._stat)
        if self._polled and state == self.state:
            return False
        self.state, self._polled = state, True
        return True


class RegistryWatcher(Generic[T]):
    """The value a caller builds from the registry file, rebuilt when the file changes; the last good one is kept.

    ``load(path)`` reads the file and builds the value; the exceptions in ``errors`` (default: ``TenantserveError``,
    which ``Registry.load`` raises for a missing, unreadable or invalid file) are a failed reload, anything else
    propagates. ``interval`` (seconds on ``clock``) lets a caller stat at most that often; 0 stats on every
    ``current()``."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        *,
        interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        stat: Stat = os.stat,
        errors: tuple[type[Exception], ...] = (TenantserveError,),
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.file = FileWatch(self.path, stat=stat)
        self._load = load
        self.interval = interval
        self._clock = clock
        self._errors = errors
        #: Told once per version of the file that fails to load (or disappears), with why.
        self.on_error = on_error
        self._checked = float("-inf")
        #: The last value that loaded (None: none ever did); kept while the file is broken or missing.
        self.value: T | None = None
        #: Why the file as it is now is not in force (None while ``value`` is the file's current content).
        self.error: Exception | None = None
        #: Successful loads so far.
        self.reloads = 0

    def current(self) -> T | None:
        """The value in force: refreshed first when ``interval`` has passed since the last check; None when the
        file never loaded (a caller that must fail closed refuses then)."""
        now = self._clock()
        if now - self._checked >= self.interval:
            self._checked = now
            self.refresh()
        return self.value

    def refresh(self) -> bool:
        """Reload if the file changed; True when it did (whether or not the new version loaded). A version that
        fails keeps ``value`` as it was, sets ``error`` and is not retried until the file changes again. The stat
        comes before the read, so a write in between is read again at the next refresh, never missed."""
        if not self.file.changed():
            return False
        if self.file.state is None:
            self._failed(RegistryError(f"{self.path}: registry file not found or not readable"))
            return True
        try:
            value = self._load(self.path)
        except self._errors as exc:
            self._failed(exc)
            return True
        self.value, self.error = value, None
        self.reloads += 1
        return True

    def _failed(self, exc: Exception) -> None:
        self.error = exc
        if self.on_error is not None:
            self.on_error(exc)
