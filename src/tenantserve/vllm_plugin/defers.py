"""Per-adapter defers, counted in EngineCore around ``Scheduler.schedule``.

vLLM skips a waiting request when ``max_loras`` distinct adapters are already scheduled in this step and the
request's adapter is not one of them (v1/core/sched/scheduler.py); every skip goes through
``self.deferred_waiting.add(request)``. We swap that set for a ``SkipLog`` (a ``set`` that also notes what was added
during one ``schedule`` call) and, after the call, keep the skips that the slot rule explains: the request wants
an adapter, ``max_loras`` adapters were scheduled, and its adapter is not among them. Skips for other reasons
(waiting for remote KV, grammar compilation, ...) do not satisfy that and are not counted.

- ``tenantserve_lora_defers_total{adapter}``: +1 per step in which at least one request for the adapter was skipped;
- ``tenantserve_lora_deferred_requests_total{adapter}``: +1 per request, the first time it is skipped.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tenantserve.vllm_plugin.labels import AdapterLabels
from tenantserve.vllm_plugin.metrics import EngineMetrics

#: Request states in which the slot rule is what skips a request; blocked states are skipped earlier, for their own reason.
SCHEDULABLE = ("WAITING", "PREEMPTED")


@dataclass(frozen=True)
class Skipped:
    request: Any
    lora_id: int | None
    lora_name: str | None
    status: str


def slot_deferred(skipped: Iterable[Skipped], scheduled_loras: set[int], max_loras: int) -> list[Skipped]:
    """The skips explained by full slots. Pure."""
    if len(scheduled_loras) < max_loras:
        return []
    return [s for s in skipped if s.lora_id and s.lora_id not in scheduled_loras and s.status in SCHEDULABLE]


class SkipLog(set):
    """vLLM's ``deferred_waiting`` set, plus a list of what was added while ``recording``."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__(items)
        self.recording = False
        self.added: list[Any] = []

    def add(self, item: Any) -> None:
        if self.recording:
            self.added.append(item)
        super().add(item)


class DeferRecorder:
    """Counts defers; remembers deferred requests weakly (a finished request is forgotten with its object)."""

    def __init__(self, metrics: EngineMetrics, labels: AdapterLabels) -> None:
        self.metrics = metrics
        self.labels = labels
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

    def record(self, deferred: list[Skipped]) -> None:
        stepped: set[str] = set()
        for s in deferred:
            label = self.labels.label(s.lora_name or "")
            if label is None:
                continue
            if label not in stepped:
                stepped.add(label)
                self.metrics.defers.labels(label).inc()
            if s.request not in self._seen:
                self._seen.add(s.request)
                self.metrics.deferred_requests.labels(label).inc()


def skipped_of(request: Any) -> Skipped:
    lora = request.lora_request
    status = getattr(request.status, "name", str(request.status))
    return Skipped(request, lora.lora_int_id if lora else None, lora.lora_name if lora else None, status)


def scheduled_loras(scheduler: Any, output: Any) -> set[int]:
    """Adapter ids of every request scheduled in this step (running and newly admitted alike)."""
    ids: set[int] = set()
    for req_id in output.num_scheduled_tokens:
        request = scheduler.requests.get(req_id)
        lora = request.lora_request if request is not None else None
        if lora and lora.lora_int_id > 0:
            ids.add(lora.lora_int_id)
    return ids


def install(scheduler_cls: type, recorder: DeferRecorder) -> bool:
    """Wrap vLLM's ``Scheduler.schedule``. Idempotent: returns False when already wrapped. A no-op without LoRA."""
    from tenantserve.vllm_plugin.patching import is_wrapped, mark_wrapped, safely

    if is_wrapped(scheduler_cls.schedule):
        return False
    original = scheduler_cls.schedule

    def schedule(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.lora_config:
            return original(self, *args, **kwargs)
        safely(recorder.labels.refresh)  # one stat: a newly registered adapter gets its series at once
        log = self.deferred_waiting
        if not isinstance(log, SkipLog):
            log = self.deferred_waiting = SkipLog(log)
        log.added.clear()
        log.recording = True
        try:
            output = original(self, *args, **kwargs)
        finally:
            log.recording = False
        if log.added:
            safely(_observe, self, output, log.added)
        return output

    def _observe(self: Any, output: Any, added: list[Any]) -> None:
        deferred = slot_deferred(map(skipped_of, added), scheduled_loras(self, output), self.lora_config.max_loras)
        if deferred:
            recorder.record(deferred)

    scheduler_cls.schedule = mark_wrapped(schedule, original)
    return True
