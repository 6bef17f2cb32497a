"""The CPU LoRA ops fix, against vLLM's own ops and punica_cpu module (real code, no engine)."""

from __future__ import annotations

import importlib

import pytest
import torch

from tenantserve.vllm_plugin import cpu_lora_fix
from tenantserve.vllm_plugin.patching import is_wrapped

ops = importlib.import_module(cpu_lora_fix.OPS_MODULE)


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    slots, tokens, hidden, rank = 3, 5, 16, 4
    x = torch.randn(tokens, hidden, generator=g)
    a = torch.randn(slots, 1, rank, hidden, generator=g)  # shrink weights: (slots, 1, rank, in)
    b = torch.randn(slots, 1, hidden, rank, generator=g)  # expand weights: (slots, 1, out, rank)
    idx = torch.tensor([-1, 0, 2, -1, 1])
    return x, a, b, idx


def _reference_shrink(x, a, idx, scale):
    out = torch.zeros(len(idx), a.shape[2])
    for t, i in enumerate(idx.tolist()):
        if i >= 0:
            out[t] = scale * (a[i, 0] @ x[t])
    return out


def test_vllm_cpu_ops_leak_the_last_slot_into_base_tokens() -> None:
    """Documents the upstream bug this fix exists for; if vLLM fixes it, this fails and the fix can go."""
    x, a, _, idx = _case()
    out = torch.zeros(len(idx), a.shape[2])
    original = getattr(ops.bgmv_shrink, "__wrapped__", ops.bgmv_shrink)
    original(x, a, out, idx, 1.0)
    assert out[0].abs().sum() > 0  # token 0 asked for no adapter, got slot 2's


def test_fixed_shrink_matches_reference_and_zeroes_base_tokens() -> None:
    x, a, _, idx = _case()
    out = torch.zeros(len(idx), a.shape[2])
    cpu_lora_fix.bgmv_shrink(x, a, out, idx, 0.5)
    torch.testing.assert_close(out, _reference_shrink(x, a, idx, 0.5))
    assert out[0].abs().sum() == 0 and out[3].abs().sum() == 0


@pytest.mark.parametrize("add_inputs", [True, False])
def test_fixed_expand_adds_nothing_for_base_tokens(add_inputs: bool) -> None:
    x, _, b, idx = _case(1)
    h = torch.randn(len(idx), b.shape[3])
    y0 = torch.randn(len(idx), b.shape[2])
    y = y0.clone()
    cpu_lora_fix.bgmv_expand(h, b, y, idx, add_inputs)
    for t, i in enumerate(idx.tolist()):
        delta = b[i, 0] @ h[t] if i >= 0 else torch.zeros(b.shape[2])
        torch.testing.assert_close(y[t], (y0[t] if add_inputs else 0) + delta)


def test_fixed_expand_slice_touches_only_its_slice_and_only_adapter_tokens() -> None:
    _, _, b, idx = _case(2)
    h = torch.randn(len(idx), b.shape[3])
    y0 = torch.randn(len(idx), 40)
    y = y0.clone()
    cpu_lora_fix.bgmv_expand_slice(h, b, y, idx, 8, b.shape[2], True)
    torch.testing.assert_close(y[:, :8], y0[:, :8])
    torch.testing.assert_close(y[:, 8 + b.shape[2]:], y0[:, 8 + b.shape[2]:])
    torch.testing.assert_close(y[0], y0[0])
    torch.testing.assert_close(y[3], y0[3])
    torch.testing.assert_close(y[1, 8:24], y0[1, 8:24] + b[0, 0] @ h[1])


def test_install_patches_ops_and_punica_cpu_once() -> None:
    punica_cpu = importlib.import_module(cpu_lora_fix.PUNICA_CPU_MODULE)
    saved = {m: {n: getattr(m, n) for n in cpu_lora_fix.FIXED} for m in (ops, punica_cpu)}
    try:
        cpu_lora_fix.install_everywhere(punica_cpu)
        for module in (ops, punica_cpu):
            for name in cpu_lora_fix.FIXED:
                assert is_wrapped(getattr(module, name)), (module.__name__, name)
        assert cpu_lora_fix.install(punica_cpu) == []  # a second registration replaces nothing
        # sgmv_* (prefill) go through the module's bgmv_*: base tokens get no delta there either
        x, a, _, idx = _case()
        out = torch.zeros(len(idx), a.shape[2])
        ops.sgmv_shrink(x, a, out, None, torch.tensor([1, 1, 1, 1, 1]), idx, 5, 1, 5, 1.0)
        assert out[0].abs().sum() == 0 and out[1].abs().sum() > 0
    finally:
        for module, fns in saved.items():
            for name, fn in fns.items():
                setattr(module, name, fn)
