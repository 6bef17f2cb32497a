"""vLLM 0.32's CPU LoRA ops, fixed twice: base-model tokens got an adapter's delta, and the delta cost more than the
base layer it decorates.

The leak: ``vllm/lora/ops/torch_ops/lora_ops.py`` selects each token's adapter with ``weights[lora_indices]``; the
"no adapter" index is -1, which in torch selects the *last* slot. So in a batch that mixes base requests with adapter
requests, a base request was computed with whatever adapter sat in the last slot. (Upstream: vllm-project/vllm PR
#48421; vLLM 0.33 masks -1.)

The cost: the same gather copies a tokens x out x rank block of weights per op and runs a batched einsum over it:
0.7-5x the base layer's matmul at Llama-2-7B widths, paid by base rows too. ``lora_delta`` groups the rows by slot
once per step and runs one shrink and one expand per distinct adapter over its rows only.

Installed when ``vllm.lora.punica_wrapper.punica_cpu`` is imported (every process that can run LoRA on CPU):

- ``PunicaWrapperCPU``'s six leaf methods (``_shrink_prefill`` ... ``_expand_slice_decode``, which every
  ``add_lora_linear``/``add_shrink``/``add_expand``/``add_lora_embedding`` call reaches) use the step's row groups,
  cached on the wrapper and keyed on its token-to-slot buffer's identity and version (rewritten by every
  ``update_metadata``), so all the layers of a step share one grouping.
- ``PunicaWrapperCPU.add_lora_linear`` (every LoRA linear layer, once per step) runs ``lora_delta.linear``: one
  gather of the adapter rows, one batched matmul per op over the slots in use, one ``index_add_`` for all of a
  packed layer's slices (q/k/v, gate/up). Installed only over the grouped leaf methods, and only if it computes
  what vLLM's does on a probe step; calls it does not cover (a caller's own buffer, other shapes) go to vLLM's.
- The module-level ``bgmv_*`` ops (in ``lora_ops``, the ``torch_ops`` package and ``punica_cpu``, which imported the
  names; ``sgmv_*`` call ``lora_ops``'s) group per call: ``add_lora_logits`` and ``apply_lora_full_linear`` reach
  them with the per-request sampler indices, and any other caller gets the fix too.

Nothing is assumed about the installed vLLM: each op is probed with a tiny call and replaced only if it computes
vLLM 0.32's math (-1 leaking the last slot) or 0.33's (-1 masked); the methods only if their signatures are the
expected ones. Anything else is logged and left alone.

``TENANTSERVE_CPU_LORA_OPS`` (read at install, for benchmarks): ``grouped`` (default), ``masked`` (the previous
fix: vLLM's gather with -1 zeroed) or ``stock`` (vLLM's own ops, leak included: never in production).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from tenantserve.settings import CPU_LORA_OPS_ENV as MODE_ENV
from tenantserve.vllm_plugin import PUNICA_CPU_MODULE, lora_delta  # noqa: F401 (PUNICA_CPU_MODULE: re-exported)
from tenantserve.vllm_plugin.lora_delta import RowGroups
from tenantserve.vllm_plugin.patching import is_wrapped, logger, mark_wrapped

OPS_MODULE = "vllm.lora.ops.torch_ops.lora_ops"
OPS_PACKAGE = "vllm.lora.ops.torch_ops"
MODES = ("grouped", "masked", "stock")
STEP_GROUPS_ATTR = "_tenantserve_row_groups"


# The previous fix (vLLM's gather, -1 zeroed): the fallback for shapes the grouped ops do not cover, and the
# ``masked`` mode.

def _masked_delta(inputs: Any, weights: Any, output_dtype: Any, indices: Any) -> Any:
    """Per-token ``x @ W[idx].T``, zero where ``idx == -1``."""
    import torch

    valid = indices >= 0
    selected = weights[indices.clamp(min=0)].to(dtype=output_dtype)
    if len(selected.shape) == 4:
        selected = selected.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_dtype), selected)
    return torch.where(valid.unsqueeze(1), outputs, torch.zeros((), dtype=outputs.dtype))


def masked_bgmv_shrink(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                       scaling: float = 1.0) -> None:
    outputs = _masked_delta(inputs, lora_b_weights, output_tensor.dtype, lora_indices_tensor)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def masked_bgmv_expand(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                       add_inputs: bool = True) -> None:
    outputs = _masked_delta(inputs, lora_b_weights, output_tensor.dtype, lora_indices_tensor)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def masked_bgmv_expand_slice(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                             slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    outputs = _masked_delta(inputs, lora_b_weights, output_tensor.dtype, lora_indices_tensor)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


MASKED = {"bgmv_shrink": masked_bgmv_shrink, "bgmv_expand": masked_bgmv_expand,
          "bgmv_expand_slice": masked_bgmv_expand_slice}


# The grouped ops with vLLM's signatures, grouping per call. Shapes outside vLLM's usual contract (a one-row delta
# broadcast over a taller output, row counts that differ) go to the masked op, which does exactly what vLLM does.

def _fits(groups: RowGroups, *tensors: Any) -> bool:
    return all(t.dim() == 2 and t.shape[0] == groups.rows for t in tensors)


def bgmv_shrink(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                scaling: float = 1.0) -> None:
    groups = RowGroups.of(lora_indices_tensor)
    if not _fits(groups, inputs, output_tensor):
        return masked_bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling)
    lora_delta.shrink(inputs, lora_b_weights, output_tensor, groups, scaling)


def bgmv_expand(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                add_inputs: bool = True) -> None:
    groups = RowGroups.of(lora_indices_tensor)
    if not _fits(groups, inputs, output_tensor):
        return masked_bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
    lora_delta.expand(inputs, lora_b_weights, output_tensor, groups, 0, None, add_inputs)


def bgmv_expand_slice(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    groups = RowGroups.of(lora_indices_tensor)
    if not _fits(groups, inputs, output_tensor):
        return masked_bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset,
                                        slice_size, add_inputs)
    lora_delta.expand(inputs, lora_b_weights, output_tensor, groups, slice_offset, slice_size, add_inputs)


GROUPED = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


# PunicaWrapperCPU's leaf methods over the step's cached groups.

def step_groups(wrapper: Any) -> RowGroups:
    """The row groups of ``wrapper``'s current token-to-slot mapping, computed once per ``update_metadata``.

    Keyed on the persistent index buffer's address and version counter (bumped by the ``copy_`` that writes each
    step's mapping) and the mapping's length: a stale grouping can never be reused for a new mapping."""
    buffer = wrapper._token_lora_indices
    key = (buffer.data_ptr(), buffer._version, wrapper.indices_len[0])
    cached = wrapper.__dict__.get(STEP_GROUPS_ATTR)
    if cached is None or cached[0] != key:
        cached = (key, RowGroups.of(wrapper.token_lora_indices))
        wrapper.__dict__[STEP_GROUPS_ATTR] = cached
    return cached[1]


def _shrink(self: Any, y: Any, x: Any, w_t_all: Any, scale: float) -> None:
    groups = step_groups(self)
    if not _fits(groups, x, y):
        return masked_bgmv_shrink(x, w_t_all, y, self.token_lora_indices, scale)
    lora_delta.shrink(x, w_t_all, y, groups, scale)


def _expand(self: Any, y: Any, x: Any, w_t_all: Any, add_inputs: bool) -> None:
    groups = step_groups(self)
    if not _fits(groups, x, y):
        return masked_bgmv_expand(x, w_t_all, y, self.token_lora_indices, add_inputs)
    lora_delta.expand(x, w_t_all, y, groups, 0, None, add_inputs)


def _expand_slice(self: Any, y: Any, x: Any, w_t_all: Any, y_offset: int, y_slice_size: int,
                  add_inputs: bool) -> None:
    groups = step_groups(self)
    if not _fits(groups, x, y):
        return masked_bgmv_expand_slice(x, w_t_all, y, self.token_lora_indices, y_offset, y_slice_size, add_inputs)
    lora_delta.expand(x, w_t_all, y, groups, y_offset, y_slice_size, add_inputs)


def _shrink_prefill(self: Any, y: Any, x: Any, w_t_all: Any, scale: float) -> None:
    if not self.no_lora:  # vLLM's prefill short cut: the whole batch is on the base
        _shrink(self, y, x, w_t_all, scale)


def _expand_prefill(self: Any, y: Any, x: Any, w_t_all: Any, add_inputs: bool) -> None:
    if not self.no_lora:
        _expand(self, y, x, w_t_all, add_inputs)


def _expand_slice_prefill(self: Any, y: Any, x: Any, w_t_all: Any, y_offset: int, y_slice_size: int,
                          add_inputs: bool) -> None:
    if not self.no_lora:
        _expand_slice(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs)


METHODS: dict[str, tuple[Callable[..., None], tuple[str, ...]]] = {
    "_shrink_prefill": (_shrink_prefill, ("self", "y", "x", "w_t_all", "scale")),
    "_shrink_decode": (_shrink, ("self", "y", "x", "w_t_all", "scale")),
    "_expand_prefill": (_expand_prefill, ("self", "y", "x", "w_t_all", "add_inputs")),
    "_expand_decode": (_expand, ("self", "y", "x", "w_t_all", "add_inputs")),
    "_expand_slice_prefill": (_expand_slice_prefill,
                              ("self", "y", "x", "w_t_all", "y_offset", "y_slice_size", "add_inputs")),
    "_expand_slice_decode": (_expand_slice, ("self", "y", "x", "w_t_all", "y_offset", "y_slice_size", "add_inputs")),
}


# add_lora_linear, fused over its slices (every LoRA linear layer calls it once per step).

LINEAR = "add_lora_linear"
LINEAR_PARAMS = ("self", "y", "x", "lora_a_stacked", "lora_b_stacked", "scale", "output_slices", "buffer", "kwargs")


def add_lora_linear(original: Callable[..., None], self: Any, y: Any, x: Any, lora_a_stacked: Any,
                    lora_b_stacked: Any, scale: float, output_slices: Any, *, buffer: Any = None,
                    **kwargs: Any) -> None:
    """``lora_delta.linear`` over the step's groups when it covers the call (vLLM's layers pass no buffer and no
    extra arguments); otherwise vLLM's ``original``, whose leaf methods are the grouped ones."""
    groups = step_groups(self)
    if buffer is None and not kwargs:
        if groups.all_base:  # every row on the base: nothing to add (vLLM's ops add nothing either)
            return
        if lora_delta.fits_linear(y, x, lora_a_stacked, lora_b_stacked, output_slices, groups):
            lora_delta.linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, groups)
            return
    original(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs)


def _linear_method(original: Callable[..., None]) -> Callable[..., None]:
    def call(self: Any, y: Any, x: Any, lora_a_stacked: Any, lora_b_stacked: Any, scale: float, output_slices: Any,
             *, buffer: Any = None, **kwargs: Any) -> None:
        add_lora_linear(original, self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer,
                        **kwargs)

    setattr(call, IMPL_ATTR, add_lora_linear)
    return mark_wrapped(call, original)


def linear_matches(cls: type, original: Callable[..., None]) -> bool:
    """True when ``original`` (``cls``'s ``add_lora_linear``) computes what the fused one does on a tiny mixed step
    (two slices, two slots, base rows between): adapter rows equal to 1e-5, base rows untouched."""
    import torch
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    x, y0 = torch.randn(5, 4, generator=g), torch.randn(5, 6, generator=g)
    a = (torch.randn(2, 1, 2, 4, generator=g), torch.randn(2, 1, 2, 4, generator=g))
    b = (torch.randn(2, 1, 2, 2, generator=g), torch.randn(2, 1, 4, 2, generator=g))
    ids = (1, 0, 2, 1, 0)  # lora ids; 0: the base
    mapping = SimpleNamespace(index_mapping=ids, prompt_mapping=ids, is_prefill=True)  # vLLM's LoRAMapping fields
    try:
        wrapper = cls(8, 8, "cpu")
        wrapper.update_metadata(mapping, [1, 2], 3, 16)
        got, want = y0.clone(), y0.clone()
        add_lora_linear(original, wrapper, got, x, a, b, 0.5, (2, 4))
        original(wrapper, want, x, a, b, 0.5, (2, 4))
    except Exception:
        return False
    adapter = torch.tensor([i > 0 for i in ids])
    return bool(torch.allclose(got[adapter], want[adapter], rtol=1e-5, atol=1e-6)
                and torch.equal(got[~adapter], y0[~adapter]))


def install_linear(cls: type) -> list[str]:
    """Replace ``cls.add_lora_linear`` (once) if it has vLLM 0.32's signature and computes the same delta."""
    original = getattr(cls, LINEAR, None)
    if original is None or is_wrapped(original):
        return []
    if tuple(inspect.signature(original).parameters) != LINEAR_PARAMS or not linear_matches(cls, original):
        logger.warning("tenantserve: %s.%s is not vLLM 0.32's; left as is (the grouped leaf ops still apply)",
                       cls.__name__, LINEAR)
        return []
    setattr(cls, LINEAR, _linear_method(original))
    return [LINEAR]


# Probes: is the function we are about to replace the one whose behaviour we reproduce?

def _probe_case() -> tuple[Any, ...]:
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, 4, generator=g), torch.randn(2, 1, 2, 4, generator=g), torch.randn(2, 1, 6, 2, generator=g),
            torch.tensor([0, -1, 1]), torch.randn(3, 2, generator=g), torch.randn(3, 8, generator=g))


def _probe_runs(op: str) -> Callable[[Callable[..., None], Any], Any]:
    """A function running ``fn`` (an op named ``op``) on the probe case with the given indices; returns the output."""
    x, a, b, _, h, y0 = _probe_case()

    def run(fn: Callable[..., None], indices: Any) -> Any:
        if op == "bgmv_shrink":
            out = y0[:, :2].clone()
            fn(x, a, out, indices, 0.5)
        elif op == "bgmv_expand":
            out = y0.clone()
            fn(h, b, out, indices, True)
        else:
            out = y0.clone()
            fn(h, b, out, indices, 1, 6, True)
        return out

    return run


def behaves_like_vllm(op: str, fn: Callable[..., None]) -> bool:
    """True when ``fn`` computes vLLM's math for adapter rows and either leaks the last slot into -1 rows (0.32) or
    leaves them alone (0.33); checked against the masked op, row by row, on a tiny float32 case."""
    import torch

    run = _probe_runs(op)
    indices = _probe_case()[3]
    try:
        got = run(fn, indices)
    except Exception:
        return False
    masked = run(MASKED[op], indices)
    leaked = run(MASKED[op], torch.where(indices < 0, 1, indices))  # -1 as the last of 2 slots
    adapter_rows = indices >= 0
    if not torch.allclose(got[adapter_rows], masked[adapter_rows], rtol=1e-5, atol=1e-6):
        return False
    return bool(torch.allclose(got[1], masked[1], rtol=1e-5, atol=1e-6)
                or torch.allclose(got[1], leaked[1], rtol=1e-5, atol=1e-6))


def install(module: ModuleType, replacements: Mapping[str, Callable[..., None]] = GROUPED) -> list[str]:
    """Replace the three ``bgmv_*`` functions in ``module`` (once, each only if it passes its probe); return the
    names replaced."""
    replaced = []
    for name, fixed in replacements.items():
        original = getattr(module, name, None)
        if original is None or is_wrapped(original):
            continue
        if not behaves_like_vllm(name, original):
            logger.warning("tenantserve: %s.%s does not compute vLLM 0.32's LoRA op; left as is", module.__name__,
                           name)
            continue
        setattr(module, name, mark_wrapped(_fresh(fixed), original))
        replaced.append(name)
    return replaced


def install_methods(cls: type) -> list[str]:
    """Replace ``PunicaWrapperCPU``'s leaf methods (once) if all six have vLLM 0.32's signatures; else none."""
    for name, (_, params) in METHODS.items():
        original = getattr(cls, name, None)
        if original is not None and is_wrapped(original):
            continue
        if original is None or tuple(inspect.signature(original).parameters) != params:
            logger.warning("tenantserve: %s.%s is missing or has an unexpected signature; "
                           "its LoRA ops are left as vLLM's", cls.__name__, name)
            return []
    replaced = []
    for name, (fixed, _) in METHODS.items():
        original = getattr(cls, name)
        if not is_wrapped(original):
            setattr(cls, name, mark_wrapped(_fresh(fixed), original))
            replaced.append(name)
    return replaced


IMPL_ATTR = "tenantserve_impl"


def _fresh(fn: Callable[..., None]) -> Callable[..., None]:
    """A new function object per install, calling ``fn`` (``mark_wrapped`` sets attributes on it)."""
    def call(*args: Any, **kwargs: Any) -> None:
        fn(*args, **kwargs)

    setattr(call, IMPL_ATTR, fn)
    return call


def mode_from(environ: Mapping[str, str]) -> str:
    mode = environ.get(MODE_ENV, "grouped").strip().lower() or "grouped"
    if mode not in MODES:
        logger.warning("tenantserve: %s=%r is not one of %s; using 'grouped'", MODE_ENV, mode, ", ".join(MODES))
        return "grouped"
    return mode


def install_everywhere(punica_cpu: ModuleType, environ: Mapping[str, str] | None = None) -> list[str]:
    """Called when ``punica_cpu`` is imported (by then the ops modules are imported too); returns what was
    replaced, as ``module.name`` strings."""
    mode = mode_from(os.environ if environ is None else environ)
    if mode == "stock":
        logger.warning("tenantserve: %s=stock: vLLM's own CPU LoRA ops stay (base rows leak the last adapter)",
                       MODE_ENV)
        return []
    ops = MASKED if mode == "masked" else GROUPED
    replaced = []
    for module in (sys.modules.get(OPS_MODULE), sys.modules.get(OPS_PACKAGE), punica_cpu):
        if module is not None:
            replaced += [f"{module.__name__}.{name}" for name in install(module, ops)]
    wrapper = getattr(punica_cpu, "PunicaWrapperCPU", None)
    if mode == "grouped" and wrapper is not None:
        methods = install_methods(wrapper)
        if methods or all(is_wrapped(getattr(wrapper, name, None)) for name in METHODS):
            methods += install_linear(wrapper)  # only over grouped leaf methods (its fallback calls them)
        replaced += [f"PunicaWrapperCPU.{name}" for name in methods]
    return replaced
