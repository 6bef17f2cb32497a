"""What an adapter's numbers can do to everyone else: refused when they would poison the engine.

Shapes and configs can be perfectly valid while the values are not: a NaN or infinite weight, or a ``lora_alpha``
that turns the delta into infinities, makes every token of that adapter NaN. On vLLM 0.32's CPU path those NaN keys
and values stay in the KV-cache blocks the request used; when another request reuses a freed block, its attention
multiplies the stale NaNs by zero weights (``0 * NaN = NaN``) and *its* output is lost too (found by hostile
testing: one NaN adapter emptied every tenant's answers). So admission refuses, per adapter:

- weights that are not floating point (``I8``, ``BOOL``, ``F8_*``: vLLM would read them as garbage) -> ``weights_dtype``;
- any NaN or infinite weight -> ``weights_not_finite``;
- any weight with ``|w| > MAX_ABS_WEIGHT`` -> ``weights_out_of_range``;
- a scaling (``lora_alpha / r``, ``/ sqrt(r)`` with ``use_rslora``; every ``rank_pattern``/``alpha_pattern`` entry)
  that is zero or above ``MAX_SCALING`` in magnitude -> ``scaling_out_of_range``.

The bounds are far above what training produces (LoRA weights are O(0.01..1); PEFT's scalings O(0.5..64)) and far
below what overflows float32/bfloat16 arithmetic in the layers that follow. Values are read one tensor at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

from tenantserve.errors import AdapterError

#: Largest |weight| served: trained LoRA factors are O(0.01..1); 1e3 is kept far from float overflow downstream.
MAX_ABS_WEIGHT = 1e3
#: Largest |lora_alpha / r| (or / sqrt(r) with rsLoRA) served; PEFT's defaults give 1..2, rsLoRA setups up to ~64.
MAX_SCALING = 1e3
#: safetensors dtypes vLLM can serve as LoRA factors.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


def check_dtypes(who: str, dtypes: dict[str, str]) -> None:
    """``dtypes``: tensor name -> safetensors dtype. Raises ``AdapterError`` (weights_dtype) for a non-float one."""
    odd = sorted((name, dtype) for name, dtype in dtypes.items() if dtype not in FLOAT_DTYPES)
    if odd:
        name, dtype = odd[0]
        raise AdapterError(f"{who}: tensor {name} is {dtype}; LoRA weights must be floating point "
                           f"({', '.join(sorted(FLOAT_DTYPES))})", code="weights_dtype")


def scalings(rank: int, alpha: float, rank_pattern: dict[str, int], alpha_pattern: dict[str, float],
             rslora: bool) -> dict[str, float]:
    """Every scaling the adapter uses, by where it comes from ("default" and each pattern key). Pure.
    PEFT: ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), per module with its patterns."""
    def scale(r: int, a: float) -> float:
        return a / (math.sqrt(r) if rslora else r)

    out = {"default": scale(rank, alpha)}
    for key in sorted({*rank_pattern, *alpha_pattern}):
        out[key] = scale(rank_pattern.get(key, rank), alpha_pattern.get(key, alpha))
    return out


def check_scalings(who: str, values: dict[str, float]) -> None:
    """Raises ``AdapterError`` (scaling_out_of_range) for a zero, non-finite or too large scaling."""
    for where, value in values.items():
        if not math.isfinite(value) or value == 0 or abs(value) > MAX_SCALING:
            what = "lora_alpha / r" if where == "default" else f"the scaling for {where!r}"
            raise AdapterError(f"{who}: {what} is {value:g}; it must be non-zero and at most {MAX_SCALING:g} in "
                               "magnitude (zero serves the base silently; larger overflows the layers after it)",
                               code="scaling_out_of_range")


def check_values(who: str, weights: Path) -> None:
    """Read every tensor of ``weights`` (one at a time) and refuse NaN, infinite or out-of-range values.
    Raises ``AdapterError`` (weights_not_finite, weights_out_of_range, weights_invalid when unreadable)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            for name in fh.keys():
                tensor = fh.get_tensor(name)
                if not tensor.is_floating_point():
                    continue  # check_dtypes refused these already
                values = tensor.float()
                if not bool(torch.isfinite(values).all()):
                    raise AdapterError(f"{who}: tensor {name} holds NaN or infinite values; vLLM would spread "
                                       "them through the shared KV cache", code="weights_not_finite")
                largest = float(values.abs().max()) if values.numel() else 0.0
                if largest > MAX_ABS_WEIGHT:
                    raise AdapterError(f"{who}: tensor {name} has a value of magnitude {largest:g} > "
                                       f"{MAX_ABS_WEIGHT:g}; trained LoRA weights are far smaller",
                                       code="weights_out_of_range")
    except AdapterError:
        raise
    except Exception as exc:  # safetensors' own parse errors: the header check normally catches these first
        raise AdapterError(f"{who}: {weights.name} cannot be read: {str(exc)[:200]}", code="weights_invalid") from None
