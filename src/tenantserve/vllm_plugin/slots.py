"""Slot hits, misses, evictions and load times, counted in the worker around vLLM's LRU adapter manager.

vLLM's ``LRUCacheWorkerLoRAManager.add_adapter`` runs once per step for every distinct adapter in the batch
(from ``_apply_adapters``) and once per runtime load (``/v1/load_lora_adapter``, ``--lora-modules``). Around it we
take a snapshot of the CPU cache and the slots before and after, and ``classify`` says what happened. Pure.

What counts (also in the README, "Metrics"):
- a **hit**: a step needs the adapter and it is already in a slot;
- a **miss**: a step needs the adapter and it is not in a slot (it is copied from the CPU cache or read from disk);
- a **CPU-cache hit** / **disk load**: how a slot was filled (every fill, request-driven or a runtime load);
- an **eviction**: an adapter pushed out of its slot to make room (labelled with the adapter pushed out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tenantserve.vllm_plugin.labels import AdapterLabels
from tenantserve.vllm_plugin.metrics import EngineMetrics

Outcome = Literal["hit", "cpu_cache", "disk"]


@dataclass(frozen=True)
class SlotSnapshot:
    cached: frozenset[int]
    active: frozenset[int]


@dataclass(frozen=True)
class Activation:
    outcome: Outcome
    evicted: frozenset[int]


def classify(adapter_id: int, reload: bool, before: SlotSnapshot, after: SlotSnapshot) -> Activation:
    """What one ``add_adapter`` call did. ``reload`` is vLLM's ``load_inplace``: always re-read from disk."""
    if reload or adapter_id not in before.cached:
        outcome: Outcome = "disk"
    elif adapter_id in before.active:
        outcome = "hit"
    else:
        outcome = "cpu_cache"
    return Activation(outcome, before.active - after.active - {adapter_id})


class AdapterRequest(Protocol):
    lora_name: str
    lora_int_id: int
    lora_path: str
    load_inplace: bool


class SlotRecorder:
    """Turns activations into metric increments; remembers which name an int id last had (ids are reused:
    vLLM's warm-up dummies take ids 1..max_loras before real adapters do)."""

    def __init__(self, metrics: EngineMetrics, labels: AdapterLabels) -> None:
        self.metrics = metrics
        self.labels = labels
        self._names: dict[int, str | None] = {}
        self._hits: dict[str, Any] = {}

    def started(self, slots: int) -> None:
        """The worker's LoRA manager exists: publish the slot count before any traffic."""
        self.metrics.slots_total.set(slots)
        self.metrics.slots_used.set(0)

    def hit(self, request: AdapterRequest) -> None:
        """Fast path for a step that finds the adapter in its slot (nothing moved, nothing evicted)."""
        label = self.labels.label(request.lora_name, request.lora_path)
        if label is not None:
            counter = self._hits.get(label)
            if counter is None:
                counter = self._hits[label] = self.metrics.slot_hits.labels(label)
            counter.inc()

    def record(self, request: AdapterRequest, act: Activation, seconds: float, *, demanded: bool,
               slots_used: int) -> None:
        label = self.labels.label(request.lora_name, request.lora_path)
        self._names[request.lora_int_id] = label
        for evicted in act.evicted:
            evicted_label = self._names.get(evicted)
            if evicted_label is not None:
                self.metrics.slot_evictions.labels(evicted_label).inc()
        if label is None:
            return
        self.metrics.slots_used.set(slots_used)
        m = self.metrics
        if act.outcome == "hit":
            if demanded:
                m.slot_hits.labels(label).inc()
            return
        if demanded:
            m.slot_misses.labels(label).inc()
        (m.disk_loads if act.outcome == "disk" else m.cpu_cache_hits).labels(label).inc()
        m.load_seconds.labels(act.outcome).observe(seconds)


def _in_slot(adapter_manager: Any, request: AdapterRequest) -> bool:
    lora_id = request.lora_int_id
    return (not request.load_inplace and lora_id in adapter_manager._active_adapters.cache
            and lora_id in adapter_manager._registered_adapters.cache)


def snapshot(adapter_manager: object) -> SlotSnapshot:
    """The CPU cache and slot ids of vLLM's ``LRUCacheLoRAModelManager`` (private attributes, read only)."""
    return SlotSnapshot(
        frozenset(adapter_manager._registered_adapters.cache),  # type: ignore[attr-defined]
        frozenset(adapter_manager._active_adapters.cache),  # type: ignore[attr-defined]
    )


IN_STEP = "_tenantserve_in_step"
COUNTS = "_tenantserve_counts"


def first_rank() -> bool:
    """Tensor/pipeline-parallel workers all hold the same adapters: only the first one counts."""
    try:
        from vllm.distributed.parallel_state import get_pp_group, get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank() == 0 and get_pp_group().rank_in_group == 0
    except Exception:  # parallel state not initialised: a single worker
        return True


def install(worker_manager_cls: type, recorder: SlotRecorder) -> bool:
    """Wrap ``create_lora_manager``, ``_apply_adapters`` and ``add_adapter`` of vLLM's
    ``LRUCacheWorkerLoRAManager``. Idempotent: returns False when already wrapped."""
    from tenantserve.vllm_plugin.patching import is_wrapped, mark_wrapped, safely

    if is_wrapped(worker_manager_cls.add_adapter):
        return False
    original_create = worker_manager_cls.create_lora_manager
    original_apply = worker_manager_cls._apply_adapters
    original_add = worker_manager_cls.add_adapter

    def create_lora_manager(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = original_create(self, *args, **kwargs)
        counts = first_rank()
        setattr(self, COUNTS, counts)
        if counts:
            safely(recorder.started, self._adapter_manager.lora_slots)
        return model

    def _apply_adapters(self: Any, lora_requests: set) -> None:
        setattr(self, IN_STEP, True)
        try:
            original_apply(self, lora_requests)
        finally:
            setattr(self, IN_STEP, False)

    def add_adapter(self: Any, lora_request: AdapterRequest) -> bool:
        if not getattr(self, COUNTS, True):
            return original_add(self, lora_request)
        if getattr(self, IN_STEP, False) and _in_slot(self._adapter_manager, lora_request):
            loaded = original_add(self, lora_request)  # the common case, every step: no snapshots needed
            safely(recorder.hit, lora_request)
            return loaded
        before = safely(snapshot, self._adapter_manager)
        start = time.perf_counter()
        loaded = original_add(self, lora_request)
        seconds = time.perf_counter() - start
        if before is not None:
            safely(_observe, self, lora_request, before, seconds)
        return loaded

    def _observe(self: Any, lora_request: AdapterRequest, before: SlotSnapshot, seconds: float) -> None:
        after = snapshot(self._adapter_manager)
        act = classify(lora_request.lora_int_id, bool(lora_request.load_inplace), before, after)
        recorder.record(lora_request, act, seconds, demanded=bool(getattr(self, IN_STEP, False)),
                        slots_used=len(after.active))

    worker_manager_cls.create_lora_manager = mark_wrapped(create_lora_manager, original_create)
    worker_manager_cls._apply_adapters = mark_wrapped(_apply_adapters, original_apply)
    worker_manager_cls.add_adapter = mark_wrapped(add_adapter, original_add)
    return True
