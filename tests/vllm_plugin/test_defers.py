"""Defers: which skipped requests the slot rule explains, and how they are counted.

The wrapper is exercised on a stand-in scheduler (``FakeScheduler``): vLLM's real ``Scheduler`` needs a model,
a KV cache and a full ``VllmConfig``. It calls ``deferred_waiting.add`` exactly where vLLM's ``skip_request`` does;
the real one is covered against the running engine in tests/integration/test_metrics_engine.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.vllm_plugin import defers
from tenantserve.vllm_plugin.defers import SkipLog, Skipped, slot_deferred
from tenantserve.vllm_plugin.labels import AdapterLabels
from tenantserve.vllm_plugin.metrics import EngineMetrics


class Req:
    def __init__(self, rid: str, adapter: str | None, lora_id: int | None, status: str = "WAITING") -> None:
        self.request_id = rid
        self.lora_request = SimpleNamespace(lora_name=adapter, lora_int_id=lora_id) if adapter else None
        self.status = SimpleNamespace(name=status)


def test_slot_deferred_only_when_slots_are_full_of_others() -> None:
    a, c, base, blocked = (Skipped(object(), 1, "a", "WAITING"), Skipped(object(), 3, "c", "WAITING"),
                           Skipped(object(), None, None, "WAITING"), Skipped(object(), 3, "c", "WAITING_FOR_FSM"))
    assert slot_deferred([a, c, base, blocked], {1, 2}, max_loras=2) == [c]
    assert slot_deferred([c], {1}, max_loras=2) == []  # a free slot: skipped for another reason


def test_skip_log_records_only_while_recording() -> None:
    log = SkipLog({"x"})
    log.add("before")
    log.recording = True
    log.add("during")
    assert log.added == ["during"] and log >= {"x", "before", "during"}


class FakeScheduler:
    """Admits waiting requests in order while slots allow, skipping the others into ``deferred_waiting``."""

    def __init__(self, max_loras: int) -> None:
        self.lora_config = SimpleNamespace(max_loras=max_loras)
        self.deferred_waiting: set = set()
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.requests: dict[str, Req] = {}

    def submit(self, *reqs: Req) -> None:
        for r in reqs:
            self.requests[r.request_id] = r
            self.waiting.append(r)

    def schedule(self) -> SimpleNamespace:
        loras = {r.lora_request.lora_int_id for r in self.running if r.lora_request}
        still = []
        for r in self.waiting:
            lid = r.lora_request.lora_int_id if r.lora_request else None
            if lid and self.lora_config and len(loras) == self.lora_config.max_loras and lid not in loras:
                self.deferred_waiting.add(r)
                still.append(r)
                continue
            self.deferred_waiting.discard(r)
            self.running.append(r)
            if lid:
                loras.add(lid)
        self.waiting = still
        return SimpleNamespace(num_scheduled_tokens={r.request_id: 1 for r in self.running})

    def finish(self, adapter: str) -> None:
        self.running = [r for r in self.running if not (r.lora_request and r.lora_request.lora_name == adapter)]


@pytest.fixture
def sched() -> tuple[CollectorRegistry, FakeScheduler]:
    registry = CollectorRegistry()
    recorder = defers.DeferRecorder(EngineMetrics.create(registry), AdapterLabels(frozenset({"a", "b", "c"})))

    class Scheduler(FakeScheduler):
        pass

    assert defers.install(Scheduler, recorder) and not defers.install(Scheduler, recorder)
    return registry, Scheduler(max_loras=2)


def count(registry: CollectorRegistry, name: str, adapter: str) -> float:
    return registry.get_sample_value(f"tenantserve_lora_{name}_total", {"adapter": adapter}) or 0.0


def test_third_adapter_waits_while_two_hold_the_slots(sched: tuple[CollectorRegistry, FakeScheduler]) -> None:
    registry, s = sched
    s.submit(Req("1", "a", 1), Req("2", "b", 2), Req("3", "c", 3), Req("4", "c", 3), Req("5", "zz", 9), Req("6", None, None))
    for _ in range(3):  # three steps with a and b running: c's two requests and zz's wait each step
        s.schedule()
    assert count(registry, "defers", "c") == 3 and count(registry, "deferred_requests", "c") == 2
    assert count(registry, "defers", "other") == 3 and count(registry, "deferred_requests", "other") == 1
    assert count(registry, "defers", "a") == 0 and count(registry, "defers", "b") == 0
    s.finish("a")
    s.schedule()  # c takes a's slot; zz still waits
    s.schedule()
    assert count(registry, "defers", "c") == 3 and count(registry, "deferred_requests", "c") == 2
    assert count(registry, "defers", "other") == 5 and count(registry, "deferred_requests", "other") == 1


def test_no_lora_config_is_a_no_op(sched: tuple[CollectorRegistry, FakeScheduler]) -> None:
    registry, s = sched
    s.lora_config = None
    s.submit(Req("1", "a", 1))
    s.schedule()
    assert not isinstance(s.deferred_waiting, SkipLog)
