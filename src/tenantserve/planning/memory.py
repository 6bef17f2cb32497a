"""The memory bill of consolidation: one shared base, and a small delta per adapter. Sizes are in bytes.

``adapter_bytes`` is the lab's formula: layers x sum over target modules of r x (in + out) x dtype bytes.
It is reconciled against the bytes on disk (``admission.adapter_dir.bytes_on_disk``) by the demo and by ``plan``.
Layer shapes are (out_features, in_features), the order of PyTorch's ``nn.Linear.weight`` and of the rest of
tenantserve (``admission.served_base.BaseFacts.linear_modules``, admission's checks, the plugin's LoRA delta).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenantserve.admission.adapter_dir import AdapterConfig
    from tenantserve.registry.schema import Registry

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1}
GIB = 1024**3
MIB = 1024**2
#: Llama-2-7B's 6,738,415,616 parameters in fp16: the lab's 12.55 GiB base.
LLAMA2_7B_BYTES = 6_738_415_616 * 2
#: Every LoRA-targetable linear layer of a Llama block, in vLLM's order.
ALL_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LinearShapes:
    """(out_features, in_features) of every LoRA-targetable linear layer of one decoder block (Llama family), the
    shape of its ``nn.Linear.weight``; ``layers``: decoder blocks; ``vocab`` / ``hidden``: 0 when unknown."""

    layers: int
    shapes: dict[str, tuple[int, int]]
    vocab: int = 0
    hidden: int = 0

    @classmethod
    def from_config(cls, config: dict) -> LinearShapes:
        """From a Hugging Face ``config.json`` (Llama family). Raises ``KeyError`` / ``ValueError`` when a size is
        missing or not a number."""
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
        shapes = {
            "q_proj": (heads * head_dim, hidden),
            "k_proj": (kv_heads * head_dim, hidden),
            "v_proj": (kv_heads * head_dim, hidden),
            "o_proj": (hidden, heads * head_dim),
            "gate_proj": (inter, hidden),
            "up_proj": (inter, hidden),
            "down_proj": (hidden, inter),
        }
        return cls(layers=int(config["num_hidden_layers"]), shapes=shapes, vocab=int(config.get("vocab_size") or 0),
                   hidden=hidden)

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> LinearShapes:
        """From ``model_dir/config.json``. Raises ``OSError`` (unreadable), ``ValueError`` (not JSON) or ``KeyError``."""
        return cls.from_config(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))


def adapter_bytes(shapes: LinearShapes, target_modules: tuple[str, ...] | list[str], rank: int,
                  dtype_bytes: int) -> int:
    """Bytes of a LoRA adapter's A (rank x in) and B (out x rank) matrices: layers x sum(r x (in + out)) x dtype
    bytes. ``dtype_bytes``: bytes per element (``DTYPE_BYTES``). Raises ``KeyError`` for a module ``shapes`` lacks."""
    per_layer = 0
    for module in target_modules:
        if module not in shapes.shapes:
            raise KeyError(f"unknown target module '{module}' (known: {', '.join(shapes.shapes)})")
        fan_out, fan_in = shapes.shapes[module]
        per_layer += rank * (fan_in + fan_out)
    return shapes.layers * per_layer * dtype_bytes


def slot_bytes(shapes: LinearShapes, max_loras: int, max_lora_rank: int, dtype_bytes: int) -> tuple[int, int]:
    """Bytes vLLM 0.32 allocates at start for ``max_loras`` slots of ``max_lora_rank``: (every linear layer of every
    block, the embedding + lm_head pair). Both are allocated whatever the adapters target (measured on the engine's
    worker by ``memprobe``: embed_tokens holds r x (vocab + hidden) per slot, lm_head the same)."""
    linear = max_loras * adapter_bytes(shapes, ALL_LINEAR_MODULES, max_lora_rank, dtype_bytes)
    vocab = max_loras * 2 * max_lora_rank * (shapes.vocab + shapes.hidden) * dtype_bytes
    return linear, vocab


def llama2_7b_shapes() -> LinearShapes:
    """Llama-2-7B: hidden 4096, 32 layers, 32 heads, MLP 11008 — the production reference of the lab."""
    return LinearShapes.from_config(
        {"hidden_size": 4096, "num_attention_heads": 32, "intermediate_size": 11008, "num_hidden_layers": 32,
         "vocab_size": 32000}
    )


@dataclass(frozen=True)
class AdapterBill:
    """One registered adapter: its bytes by the formula beside its bytes on disk (they must agree to a few %)."""

    name: str
    config: AdapterConfig
    formula_bytes: int
    disk_bytes: int


def adapter_bills(registry: Registry, shapes: LinearShapes) -> list[AdapterBill]:
    """The formula (dtype from each adapter's safetensors header) and the bytes on disk, for every adapter.
    Raises ``AdapterError`` for an adapter whose config or weights header cannot be read, ``KeyError`` for a target
    module ``shapes`` lacks."""
    from tenantserve.admission.adapter_dir import AdapterConfig, bytes_on_disk, weight_files
    from tenantserve.admission.weights import dtype_bytes

    bills = []
    for _, adapter in registry.adapters():
        path = registry.adapter_path(adapter)
        cfg = AdapterConfig.read(path, name=adapter.name)
        safetensors = [f for f in weight_files(path) if f.suffix == ".safetensors"]
        width = dtype_bytes(safetensors[0], who=f"adapter '{adapter.name}'") if safetensors else 4
        formula = adapter_bytes(shapes, cfg.target_modules, cfg.rank, width)
        bills.append(AdapterBill(adapter.name, cfg, formula, bytes_on_disk(path)))
    return bills


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, two decimals (``12.55 GiB``); below 1 KiB, whole bytes."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def registry_plan_values(registry: Registry) -> dict[str, object]:
    """What a registry says about the planning inputs: its tenants, its largest adapter (rank, target modules, dtype
    from its weights, or the engine's dtype when set), the engine knobs as the launcher resolves them.
    One engine serves the whole registry. Raises ``AdapterError`` / ``RegistryError`` for unreadable entries."""
    from tenantserve.admission.adapter_dir import AdapterConfig, weight_files
    from tenantserve.admission.weights import dtype_bytes
    from tenantserve.registry.knobs import resolve_knobs

    configs = [(a, AdapterConfig.read(registry.adapter_path(a), name=a.name)) for _, a in registry.adapters()]
    knobs = resolve_knobs(registry, {a.name: cfg.max_rank for a, cfg in configs})
    values: dict[str, object] = {
        "tenants": len(registry.tenants), "tenants_per_engine": max(1, len(registry.tenants)),
        "max_loras": knobs.max_loras, "max_lora_rank": knobs.max_lora_rank, "max_cpu_loras": knobs.max_cpu_loras,
    }
    if configs:
        spec, largest = max(configs, key=lambda pair: (pair[1].max_rank, len(pair[1].target_modules)))
        values["adapter_rank"] = largest.max_rank
        values["target_modules"] = ALL_LINEAR_MODULES if largest.all_linear else tuple(
            m for m in largest.target_modules if m in ALL_LINEAR_MODULES)
        files = [f for f in weight_files(registry.adapter_path(spec)) if f.suffix == ".safetensors"]
        if files:
            values["dtype_bytes"] = dtype_bytes(files[0], who=f"adapter '{spec.name}'")
    if registry.engine.dtype in DTYPE_BYTES:  # the engine runs adapters in its own dtype
        values["dtype_bytes"] = DTYPE_BYTES[registry.engine.dtype]
    return values
