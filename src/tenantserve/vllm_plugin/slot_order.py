"""Fix for needless slot thrash in vLLM 0.32's LRU adapter manager: a step can evict an adapter it needs itself.

Every step, ``LRUCacheWorkerLoRAManager._apply_adapters`` activates the batch's adapters one by one, in the
iteration order of a ``set`` of ``LoRARequest`` (hash order: random per process). When a new adapter enters full
slots before the step's resident adapters have been touched, the LRU victim can be one of *those*; activating it
next evicts another slot and copies it back in. Seen on the shared test engine (max_loras 2): ``sql`` and
``pirate`` held both slots, ``sql``'s last request finished, and the next step ran ``pirate`` + ``french``: activated
french-first, it pushed out ``pirate`` (touched before ``sql`` in the step before), and ``pirate`` then pushed out
``sql`` and was copied back from the CPU cache: two evictions and a reload where one eviction does. The same order
can make a disk load drop a CPU-cached adapter that the step needs (vLLM issue #14497 is that case for the CPU cache).

The fix activates in a safe order: adapters already in a slot first (the step only touches them), then adapters in
the CPU cache, then the ones read from disk or reloaded in place. Once every resident adapter the step needs has been
touched, the least recently used slot always belongs to an adapter the step does not need (a batch never needs more
than ``max_loras``), and the same holds for the CPU cache (``max_cpu_loras >= max_loras``). What is loaded is
unchanged; only which adapter makes room changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from tenantserve.vllm_plugin.patching import mark_wrapped, safely

MARKER = "__tenantserve_slot_order__"


def activation_order(requests: Iterable[Any], in_slot: Collection[int], cached: Collection[int]) -> list[Any]:
    """The step's adapter requests, resident ones first, then CPU-cached, then the rest (stable within each group).
    ``None`` entries (vLLM filters them) are dropped."""

    def rank(request: Any) -> int:
        if request.load_inplace or request.lora_int_id not in cached:
            return 2
        return 0 if request.lora_int_id in in_slot else 1

    return sorted((r for r in requests if r), key=rank)


def install(worker_manager_cls: type) -> bool:
    """Wrap ``_apply_adapters`` of vLLM's ``LRUCacheWorkerLoRAManager`` (once; False when already done)."""
    original = worker_manager_cls._apply_adapters
    fn: Any = original
    while fn is not None:  # other tenantserve wrappers may sit on top of ours
        if getattr(fn, MARKER, False):
            return False
        fn = getattr(fn, "__wrapped__", None)

    def _apply_adapters(self: Any, lora_requests: Iterable[Any]) -> None:
        manager = self._adapter_manager
        try:
            in_slot = manager._active_adapters.cache
            if all(r.lora_int_id in in_slot and not r.load_inplace for r in lora_requests if r):
                return original(self, lora_requests)  # the common step: nothing moves, so the order cannot matter
        except Exception:  # vLLM's internals changed: the general path below logs it once
            pass
        requests = list(lora_requests)
        # vLLM's internals changed (None): keep its own order rather than fail the step; logged once
        ordered = safely(activation_order, requests, manager._active_adapters.cache,
                         manager._registered_adapters.cache)
        return original(self, requests if ordered is None else ordered)

    setattr(_apply_adapters, MARKER, True)
    worker_manager_cls._apply_adapters = mark_wrapped(_apply_adapters, original)
    return True
