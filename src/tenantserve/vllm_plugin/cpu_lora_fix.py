"""Fix for a cross-tenant leak in vLLM 0.32's CPU LoRA ops: base-model tokens get an adapter's delta.

``vllm/lora/ops/torch_ops/lora_ops.py`` selects each token's adapter with ``weights[lora_indices]``; the
"no adapter" index is -1, which in torch selects the *last* slot. So in a batch that mixes base requests with
adapter requests (the whole point of multi-tenant serving), a base request is computed with whatever adapter sits in
the last slot: the base answers the SQL prompt with SQL, or in pirate talk. GPU kernels skip index -1; these do not.
(Upstream: vllm-project/vllm PR #48421, "Skip no-LoRA tokens (index -1) in CPU torch bgmv ops", open.)

The replacements below compute exactly what vLLM's do for tokens with an adapter, and a zero delta for index -1.
They are installed into ``vllm.lora.ops.torch_ops`` (and its ``lora_ops`` module, whose ``sgmv_*`` call them) and
into ``vllm.lora.punica_wrapper.punica_cpu``, which imported the names directly.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from tenantserve.vllm_plugin.patching import is_wrapped, mark_wrapped

OPS_MODULE = "vllm.lora.ops.torch_ops.lora_ops"
PUNICA_CPU_MODULE = "vllm.lora.punica_wrapper.punica_cpu"


def _delta(inputs: Any, weights: Any, output_dtype: Any, indices: Any) -> Any:
    """Per-token ``x @ W[idx].T``, zero where ``idx == -1``."""
    import torch

    valid = indices >= 0
    selected = weights[indices.clamp(min=0)].to(dtype=output_dtype)
    if len(selected.shape) == 4:
        selected = selected.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_dtype), selected)
    return torch.where(valid.unsqueeze(1), outputs, torch.zeros((), dtype=outputs.dtype))


def bgmv_shrink(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                scaling: float = 1.0) -> None:
    outputs = _delta(inputs, lora_b_weights, output_tensor.dtype, lora_indices_tensor)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def bgmv_expand(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                add_inputs: bool = True) -> None:
    outputs = _delta(inputs, lora_b_weights, output_tensor.dtype, lora_indices_tensor)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def bgmv_expand_slice(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    outputs = _delta(inputs, lora_b_weights, output_tensor.dtype, lora_indices_tensor)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


FIXED = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


def install(module: ModuleType) -> list[str]:
    """Replace the three ``bgmv_*`` functions in ``module`` (once); return the names replaced."""
    replaced = []
    for name, fixed in FIXED.items():
        original = getattr(module, name, None)
        if original is None or is_wrapped(original):
            continue
        setattr(module, name, mark_wrapped(fixed, original))
        replaced.append(name)
    return replaced


def install_everywhere(punica_cpu: ModuleType) -> None:
    """Called when ``punica_cpu`` is imported: by then the ops modules are imported too."""
    import sys

    for name in (OPS_MODULE, "vllm.lora.ops.torch_ops"):
        if name in sys.modules:
            install(sys.modules[name])
    install(punica_cpu)
