"""Slot hits, misses, evictions and load sources, counted around vLLM's own LRU adapter managers.

The managers are vLLM's real classes (``LRUCacheWorkerLoRAManager`` over ``LRUCacheLoRAModelManager``, with their real
LRU caches); only what needs a model is stubbed: reading weights (``_load_adapter`` returns an object with an id)
and writing them into layers (no LoRA layers, so activation only moves ids between slots).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.vllm_plugin import slots
from tenantserve.vllm_plugin.labels import WARMUP_PATH, AdapterLabels
from tenantserve.vllm_plugin.metrics import EngineMetrics
from tenantserve.vllm_plugin.patching import is_wrapped
from tenantserve.vllm_plugin.slots import SlotSnapshot, classify

wm = pytest.importorskip("vllm.lora.worker_manager")
mm = pytest.importorskip("vllm.lora.model_manager")
from vllm.lora.request import LoRARequest  # noqa: E402


def test_classify_pure() -> None:
    s = SlotSnapshot
    assert classify(1, False, s(frozenset({1, 2}), frozenset({1})), s(frozenset({1, 2}), frozenset({1}))).outcome == "hit"
    act = classify(2, False, s(frozenset({1, 2, 3}), frozenset({1, 3})), s(frozenset({1, 2, 3}), frozenset({2, 3})))
    assert act.outcome == "cpu_cache" and act.evicted == {1}
    assert classify(4, False, s(frozenset({1}), frozenset({1})), s(frozenset({1, 4}), frozenset({1, 4}))).outcome == "disk"
    assert classify(1, True, s(frozenset({1}), frozenset({1})), s(frozenset({1}), frozenset({1}))).outcome == "disk"


class _ModelManager(mm.LRUCacheLoRAModelManager):
    def _validate_moe_lora_format(self, lora: object) -> None:
        pass

    def _create_merged_loras_inplace(self, lora: object) -> None:
        pass


def _as_shipped(cls: type) -> type:
    """vLLM's methods as it ships them, even when an earlier test in the session loaded vLLM's general plugins in
    this process (the tenantserve plugin's import hook then wrapped them on vLLM's own class)."""
    for klass in cls.__mro__[1:]:
        for name, value in list(vars(klass).items()):
            if is_wrapped(value) and name not in vars(cls):
                while is_wrapped(value):
                    value = value.__wrapped__
                setattr(cls, name, value)
    return cls


@_as_shipped
class _WorkerManager(wm.LRUCacheWorkerLoRAManager):
    def _load_adapter(self, lora_request: LoRARequest) -> object:
        return SimpleNamespace(id=lora_request.lora_int_id)


def make_worker(max_loras: int, max_cpu_loras: int) -> _WorkerManager:
    """vLLM's managers without a model: the constructors need one, so the LRU state is set up by hand."""
    _as_shipped(_WorkerManager)  # again: the plugin may have been loaded (and patched vLLM) since the class was made
    model = object.__new__(_ModelManager)
    model.lora_config = SimpleNamespace(max_loras=max_loras, max_cpu_loras=max_cpu_loras)
    model._registered_adapters = mm.AdapterLRUCache(max_cpu_loras, model.deactivate_adapter)
    model._active_adapters = mm.AdapterLRUCache(max_loras, model._deactivate_adapter)
    model.lora_index_to_id = [None] * max_loras
    model.modules = {}
    worker = object.__new__(_WorkerManager)
    worker._adapter_manager = model
    return worker


@pytest.fixture
def counted() -> tuple[CollectorRegistry, type]:
    registry = CollectorRegistry()
    recorder = slots.SlotRecorder(EngineMetrics.create(registry), AdapterLabels(frozenset({"a", "b", "c"})))

    _as_shipped(_WorkerManager)

    class Worker(_WorkerManager):  # a fresh subclass per test: install() patches the class it is given
        pass

    assert slots.install(Worker, recorder)
    assert not slots.install(Worker, recorder)  # twice -> wrapped once
    return registry, Worker


def req(name: str, lora_id: int, path: str | None = None) -> LoRARequest:
    return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=path or f"/adapters/{name}")


def value(registry: CollectorRegistry, name: str, adapter: str) -> float:
    return registry.get_sample_value(f"tenantserve_lora_{name}_total", {"adapter": adapter}) or 0.0


def test_three_adapters_on_two_slots(counted: tuple[CollectorRegistry, type]) -> None:
    registry, Worker = counted
    worker = make_worker(max_loras=2, max_cpu_loras=4)
    worker.__class__ = Worker
    a, b, c = req("a", 1), req("b", 2), req("c", 3)
    steps = [{a}, {a}, {a, b}, {b}, {c}, {a}, {a, c}]
    for batch in steps:
        worker._apply_adapters(batch)
    # a: miss(disk), hit, hit, [c evicts a], miss(cpu), hit      b: miss(disk), hit, evicted by a
    # c: miss(disk) evicting a, hit at the last step
    assert (value(registry, "slot_hits", "a"), value(registry, "slot_misses", "a")) == (3, 2)
    assert (value(registry, "slot_hits", "b"), value(registry, "slot_misses", "b")) == (1, 1)
    assert (value(registry, "slot_hits", "c"), value(registry, "slot_misses", "c")) == (1, 1)
    assert [value(registry, "disk_loads", n) for n in "abc"] == [1, 1, 1]
    assert [value(registry, "cpu_cache_hits", n) for n in "abc"] == [1, 0, 0]
    assert [value(registry, "slot_evictions", n) for n in "abc"] == [1, 1, 0]
    assert registry.get_sample_value("tenantserve_lora_load_seconds_count", {"source": "disk"}) == 3
    assert registry.get_sample_value("tenantserve_lora_load_seconds_count", {"source": "cpu_cache"}) == 1
    assert registry.get_sample_value("tenantserve_lora_slots_used") == 2


def test_runtime_loads_fill_slots_but_are_not_hits_or_misses(counted: tuple[CollectorRegistry, type]) -> None:
    registry, Worker = counted
    worker = make_worker(max_loras=2, max_cpu_loras=2)
    worker.__class__ = Worker
    for r in (req("a", 1), req("b", 2), req("c", 3)):  # /v1/load_lora_adapter -> worker.add_lora -> add_adapter
        worker.add_adapter(r)
    assert [value(registry, "disk_loads", n) for n in "abc"] == [1, 1, 1]
    assert sum(value(registry, k, n) for k in ("slot_hits", "slot_misses") for n in "abc") == 0
    assert value(registry, "slot_evictions", "a") == 1


def test_warmup_dummies_and_unknown_names(counted: tuple[CollectorRegistry, type]) -> None:
    registry, Worker = counted
    worker = make_worker(max_loras=2, max_cpu_loras=4)
    worker.__class__ = Worker
    worker._apply_adapters({req("warmup_1", 1, WARMUP_PATH), req("warmup_2", 2, WARMUP_PATH)})
    worker._adapter_manager.remove_all_adapters()
    worker._apply_adapters({req("a", 1), req("stranger", 2)})  # ids reused after warm-up, as vLLM does
    worker._apply_adapters({req("a", 1)})
    worker._apply_adapters({req("c", 3)})  # evicts the least recently used: the stranger
    samples = [s for fam in registry.collect() for s in fam.samples if s.labels.get("adapter", "").startswith("warm")]
    assert samples == []
    assert value(registry, "slot_misses", "other") == 1
    assert value(registry, "slot_evictions", "other") == 1 and value(registry, "slot_evictions", "a") == 0


def test_a_new_adapter_never_evicts_one_the_same_step_needs(counted: tuple[CollectorRegistry, type]) -> None:
    """vLLM iterates the step's adapters in set (hash) order; given the worst order, the step {b, c} after {b, a}
    must still evict only a. Without ``slot_order`` c evicts b, b evicts a and is copied back: two evictions."""
    from tenantserve.vllm_plugin import slot_order

    registry, Worker = counted
    assert slot_order.install(Worker) and not slot_order.install(Worker)
    worker = make_worker(max_loras=2, max_cpu_loras=4)
    worker.__class__ = Worker
    a, b, c = req("a", 1), req("b", 2), req("c", 3)
    for step in ([b, a], [c, b]):  # lists: the adversarial iteration order, fixed
        worker._apply_adapters(step)
    assert [value(registry, "slot_evictions", n) for n in "abc"] == [1, 0, 0]
    assert [value(registry, "slot_misses", n) for n in "abc"] == [1, 1, 1]  # the first fills, then c's entry
    assert set(worker._adapter_manager._active_adapters.cache) == {2, 3}


def test_without_the_order_fix_vllm_thrashes(counted: tuple[CollectorRegistry, type]) -> None:
    """The same steps on vLLM's own order (documents the upstream behaviour the fix exists for)."""
    registry, Worker = counted
    worker = make_worker(max_loras=2, max_cpu_loras=4)
    worker.__class__ = Worker
    a, b, c = req("a", 1), req("b", 2), req("c", 3)
    for step in ([b, a], [c, b]):
        worker._apply_adapters(step)
    assert [value(registry, "slot_evictions", n) for n in "abc"] == [1, 1, 0]
    assert value(registry, "slot_misses", "b") == 2 and value(registry, "cpu_cache_hits", "b") == 1


def test_a_disk_load_never_drops_a_cached_adapter_the_step_needs(counted: tuple[CollectorRegistry, type]) -> None:
    """CPU cache of 2 (= slots): a step {b, c} with c on disk must drop a from the CPU cache, not b."""
    from tenantserve.vllm_plugin import slot_order

    registry, Worker = counted
    slot_order.install(Worker)
    worker = make_worker(max_loras=2, max_cpu_loras=2)
    worker.__class__ = Worker
    a, b, c = req("a", 1), req("b", 2), req("c", 3)
    for step in ([b, a], [c, b]):
        worker._apply_adapters(step)
    assert set(worker._adapter_manager._registered_adapters.cache) == {2, 3}
    assert [value(registry, "disk_loads", n) for n in "abc"] == [1, 1, 1]


def test_activation_order_pure() -> None:
    from tenantserve.vllm_plugin.slot_order import activation_order

    a, b, c, d = req("a", 1), req("b", 2), req("c", 3), req("d", 4)
    reload = LoRARequest(lora_name="e", lora_int_id=5, lora_path="/adapters/e", load_inplace=True)
    assert activation_order([d, reload, c, None, b, a], in_slot={1, 5}, cached={1, 2, 5}) == [a, b, d, reload, c]
