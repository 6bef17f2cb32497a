"""The registry file, re-read when it changes: keys added or revoked and adapters granted apply without a restart.

``current()`` is called per request and stats the file every time (``interval`` 0, the default; an ``os.stat`` is
microseconds), reloading only when (inode, size, mtime_ns) changed: a registry written before the sidecar answers
201 is in force for the very next request, in every API-server process. Writers replace the file atomically
(registry.atomic_write_text, a new inode each time), so a reload never sees half a file. A registry that fails validation keeps the last good view (and is logged);
with no good view at all, requests are refused (fail closed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tenantserve.errors import TenantserveError
from tenantserve.middleware.errors import RegistryUnavailable
from tenantserve.middleware.policy import AccessView
from tenantserve.registry.schema import Registry

log = logging.getLogger("tenantserve.middleware")

Stamp = tuple[int, int, int]


class RegistryWatcher:
    def __init__(
        self,
        path: Path,
        *,
        environ: Mapping[str, str],
        interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], os.stat_result] = os.stat,
    ) -> None:
        self.path = path
        self.environ = environ
        self.interval = interval
        self.clock = clock
        self.stat = stat
        self._view: AccessView | None = None
        self._stamp: Stamp | None = None
        self._checked = float("-inf")
        self.reloads = 0

    def current(self) -> AccessView:
        now = self.clock()
        if now - self._checked >= self.interval:
            self._checked = now
            self.refresh()
        if self._view is None:
            raise RegistryUnavailable(f"the tenant registry {self.path} could not be loaded")
        return self._view

    def refresh(self) -> None:
        """Reload if the file changed since the last successful or failed load."""
        try:
            st = self.stat(self.path)
        except OSError as exc:
            if self._stamp is not None:
                log.warning("tenantserve: registry %s unreadable (%s); keeping the last good version", self.path, exc)
                self._stamp = None
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            registry = Registry.load(self.path, check_paths=False)
        except TenantserveError as exc:
            log.warning("tenantserve: registry reload refused, keeping the last good version: %s", exc)
            return
        self._view = AccessView.build(registry, self.environ)
        self.reloads += 1
