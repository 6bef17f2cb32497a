"""What the sidecar knows about each registered adapter right now: its state, last error, and timings.

In memory only: the registry is the durable desired state, the engine's ``/v1/models`` the actual one; this board is
rebuilt from both by the reconciler and exposed by ``GET /admin/adapters`` and the ``tenantserve_adapters`` gauge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from tenantserve.sidecar.metrics import SidecarMetrics


class AdapterState(StrEnum):
    """``desired``: registered, not (yet) on the engine; ``loading``; ``loaded``: listed and warmed up; ``failed``:
    the last attempt was refused (``AdapterStatus.last_error``), retried after a backoff."""

    DESIRED = "desired"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass
class AdapterStatus:
    """One registered adapter as ``GET /admin/adapters`` shows it. Seconds for ``load_seconds`` / ``warmup_seconds``;
    ``updated`` is wall-clock (``time.time()``), ``next_retry`` monotonic."""

    name: str
    tenant: str
    path: str
    state: AdapterState = AdapterState.DESIRED
    last_error: str | None = None
    error_code: str | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    attempts: int = 0
    next_retry: float = 0.0  # time.monotonic() before which the reconciler leaves a failed adapter alone
    updated: float = field(default_factory=time.time)


class StatusBoard:
    """The sidecar's in-memory view of every registered adapter's state (``AdapterStatus`` by adapter name).

    Owns that table and keeps the ``tenantserve_adapters{state}`` gauge equal to it after every change. Written by
    the reconciler and ``AdminService`` from one event loop (no lock); rebuilt from the registry and the engine after
    a restart, never persisted. ``set`` and ``fail`` raise ``KeyError`` for a name not ``ensure``d first; nothing
    else raises.
    """

    def __init__(self, metrics: SidecarMetrics) -> None:
        self._metrics = metrics
        self._items: dict[str, AdapterStatus] = {}

    def get(self, name: str) -> AdapterStatus | None:
        return self._items.get(name)

    def all(self) -> list[AdapterStatus]:
        return sorted(self._items.values(), key=lambda s: (s.tenant, s.name))

    def ensure(self, name: str, tenant: str, path: str) -> AdapterStatus:
        """The adapter's status; a fresh ``desired`` one when it is new or its tenant or path changed."""
        status = self._items.get(name)
        if status is None or status.path != path or status.tenant != tenant:
            status = self._items[name] = AdapterStatus(name, tenant, path)
            self._publish()
        return status

    def set(self, name: str, state: AdapterState, **fields: object) -> None:
        status = self._items[name]
        status.state = state
        for key, value in fields.items():
            setattr(status, key, value)
        status.updated = time.time()
        self._publish()

    def fail(self, name: str, error: Exception, *, backoff_initial: float, backoff_max: float) -> None:
        """Mark it failed with ``error`` (its ``code`` when typed) and the next retry after an exponential backoff:
        ``backoff_initial`` seconds doubled per consecutive attempt, at most ``backoff_max``."""
        status = self._items[name]
        status.attempts += 1
        delay = min(backoff_max, backoff_initial * 2 ** (status.attempts - 1))
        self.set(name, AdapterState.FAILED, last_error=str(error), error_code=getattr(error, "code", "error"),
                 next_retry=time.monotonic() + delay)

    def retain(self, names: set[str]) -> None:
        """Forget every adapter that is no longer registered."""
        for name in set(self._items) - names:
            del self._items[name]
        self._publish()

    def discard(self, name: str) -> None:
        self._items.pop(name, None)
        self._publish()

    def _publish(self) -> None:
        counts: dict[str, int] = {}
        for status in self._items.values():
            counts[status.state.value] = counts.get(status.state.value, 0) + 1
        self._metrics.set_states(counts)
