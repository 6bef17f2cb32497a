"""Capacity planning: what consolidation costs and saves, from the lab's arithmetic. Pure; no engine.

vLLM reserves, at start, ``max_loras`` slots of ``max_lora_rank`` for *every* LoRA-capable linear layer of the base
(q/k/v/o and the MLP) and for the embedding and lm_head, whatever the adapters target: that is the slot bill
(checked against the engine's own tensors: ``plan --measure``). Each adapter also sits in host memory
(``max_cpu_loras``). Dedicated serving pays one base copy per tenant; consolidated serving pays one per engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tenantserve.planning.memory import ALL_LINEAR_MODULES, GIB, LinearShapes, adapter_bytes, slot_bytes

ALL_MODULES = ALL_LINEAR_MODULES


@dataclass(frozen=True)
class PlanInput:
    """What a plan is computed from. Sizes in bytes (``base_bytes``: the base's weights; ``gpu_bytes``: one GPU's
    memory; ``dtype_bytes``: per element of an adapter), ``gpu_memory_utilization`` a fraction (vLLM's flag), the
    rest counts. ``shapes``: the base's layers, (out, in) each."""

    shapes: LinearShapes
    base_bytes: int
    dtype_bytes: int = 2
    tenants: int = 40
    adapter_rank: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_loras: int = 8
    max_lora_rank: int = 16
    max_cpu_loras: int = 40
    gpu_bytes: int = 80 * GIB
    gpu_memory_utilization: float = 0.9
    tenants_per_engine: int = 40


@dataclass(frozen=True)
class Plan:
    """The bill, in bytes and GPUs: one adapter (``adapter_bytes``), the slots vLLM reserves per engine at start
    (``slot_bytes``), the host cache per engine (``host_cache_bytes``), what is left per engine for the KV cache
    (``kv_bytes_per_engine``; negative: the engine does not fit), GPUs for one deployment per tenant against the
    consolidated engines."""

    adapter_bytes: int
    slot_bytes: int
    host_cache_bytes: int
    kv_bytes_per_engine: int
    dedicated_gpus: int
    consolidated_engines: int
    consolidated_gpus: int

    @property
    def gpus_saved(self) -> int:
        """Dedicated GPUs minus consolidated ones (negative when consolidation costs more)."""
        return self.dedicated_gpus - self.consolidated_gpus


def gpus_for_base(base_bytes: int, gpu_bytes: int, utilization: float) -> int:
    """GPUs one copy of the base needs (tensor parallel), leaving at least a tenth of the budget for KV cache."""
    usable = gpu_bytes * utilization
    return max(1, math.ceil(base_bytes / (usable * 0.9)))


def make_plan(p: PlanInput) -> Plan:
    """The plan for ``p``. Pure. Raises ``ValueError`` when ``adapter_rank > max_lora_rank`` or ``max_cpu_loras <
    max_loras`` (vLLM refuses both), ``KeyError`` for a target module ``shapes`` lacks."""
    if p.adapter_rank > p.max_lora_rank:
        raise ValueError(f"adapter rank {p.adapter_rank} > max_lora_rank {p.max_lora_rank}")
    if p.max_cpu_loras < p.max_loras:
        raise ValueError(f"max_cpu_loras {p.max_cpu_loras} < max_loras {p.max_loras}")
    one = adapter_bytes(p.shapes, p.target_modules, p.adapter_rank, p.dtype_bytes)
    slots = sum(slot_bytes(p.shapes, p.max_loras, p.max_lora_rank, p.dtype_bytes))
    per_engine_gpus = gpus_for_base(p.base_bytes + slots, p.gpu_bytes, p.gpu_memory_utilization)
    kv = int(per_engine_gpus * p.gpu_bytes * p.gpu_memory_utilization) - p.base_bytes - slots
    engines = max(1, math.ceil(p.tenants / p.tenants_per_engine))
    dedicated = p.tenants * gpus_for_base(p.base_bytes, p.gpu_bytes, p.gpu_memory_utilization)
    return Plan(
        adapter_bytes=one,
        slot_bytes=slots,
        host_cache_bytes=min(p.max_cpu_loras, p.tenants_per_engine) * one,
        kv_bytes_per_engine=kv,
        dedicated_gpus=dedicated,
        consolidated_engines=engines,
        consolidated_gpus=engines * per_engine_gpus,
    )


#: The lab's reference: 40 tenants of rank-16 q/k/v/o adapters in fp16, eight slots, every adapter in host memory.
REFERENCE: dict[str, object] = {
    "tenants": 40, "adapter_rank": 16, "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj"), "max_loras": 8,
    "max_lora_rank": 16, "max_cpu_loras": 40, "dtype_bytes": 2, "tenants_per_engine": 40,
}


@dataclass(frozen=True)
class Sourced:
    """One planning input and where it came from: ``option`` (the command line), ``registry`` or ``reference``."""

    value: object
    source: str


def choose_inputs(options: dict[str, object | None], registry: dict[str, object] | None) -> dict[str, Sourced]:
    """Each input from the command line when given, else from the registry when planning one, else the lab's
    reference. Pure."""
    out = {}
    for key, default in REFERENCE.items():
        if options.get(key) is not None:
            out[key] = Sourced(options[key], "option")
        elif registry is not None and registry.get(key) is not None:
            out[key] = Sourced(registry[key], "registry")
        else:
            out[key] = Sourced(default, "reference")
    return out
