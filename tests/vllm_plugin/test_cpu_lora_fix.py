"""The CPU LoRA ops fix, against vLLM's own ops and punica_cpu module (real code, no engine). The grouped math
itself is property-tested in test_lora_delta*.py."""

from __future__ import annotations

import importlib
import logging

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


OPS = {"grouped": cpu_lora_fix.GROUPED, "masked": cpu_lora_fix.MASKED}


@pytest.mark.parametrize("kind", OPS)
def test_fixed_shrink_matches_reference_and_zeroes_base_tokens(kind: str) -> None:
    x, a, _, idx = _case()
    out = torch.randn(len(idx), a.shape[2])
    OPS[kind]["bgmv_shrink"](x, a, out, idx, 0.5)
    torch.testing.assert_close(out, _reference_shrink(x, a, idx, 0.5))
    assert out[0].abs().sum() == 0 and out[3].abs().sum() == 0


@pytest.mark.parametrize("kind", OPS)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_fixed_expand_adds_nothing_for_base_tokens(add_inputs: bool, kind: str) -> None:
    x, _, b, idx = _case(1)
    h = torch.randn(len(idx), b.shape[3])
    y0 = torch.randn(len(idx), b.shape[2])
    y = y0.clone()
    OPS[kind]["bgmv_expand"](h, b, y, idx, add_inputs)
    for t, i in enumerate(idx.tolist()):
        delta = b[i, 0] @ h[t] if i >= 0 else torch.zeros(b.shape[2])
        torch.testing.assert_close(y[t], (y0[t] if add_inputs else 0) + delta)


@pytest.mark.parametrize("kind", OPS)
def test_fixed_expand_slice_touches_only_its_slice_and_only_adapter_tokens(kind: str) -> None:
    _, _, b, idx = _case(2)
    h = torch.randn(len(idx), b.shape[3])
    y0 = torch.randn(len(idx), 40)
    y = y0.clone()
    OPS[kind]["bgmv_expand_slice"](h, b, y, idx, 8, b.shape[2], True)
    torch.testing.assert_close(y[:, :8], y0[:, :8])
    torch.testing.assert_close(y[:, 8 + b.shape[2]:], y0[:, 8 + b.shape[2]:])
    torch.testing.assert_close(y[0], y0[0])
    torch.testing.assert_close(y[3], y0[3])
    torch.testing.assert_close(y[1, 8:24], y0[1, 8:24] + b[0, 0] @ h[1])


def test_grouped_expand_keeps_vllms_one_row_broadcast() -> None:
    """vLLM's bgmv_expand adds a one-row delta to every row of a taller output; the grouped op defers to the masked
    one for that shape instead of mis-grouping it."""
    _, _, b, _ = _case(3)
    h = torch.randn(1, b.shape[3])
    y = torch.zeros(4, b.shape[2])
    cpu_lora_fix.bgmv_expand(h, b, y, torch.tensor([1]), True)
    for row in y:
        torch.testing.assert_close(row, b[1, 0] @ h[0])


@pytest.fixture
def saved_vllm():
    """Restore vLLM's ops and PunicaWrapperCPU methods after a test that installs the fix."""
    punica_cpu = importlib.import_module(cpu_lora_fix.PUNICA_CPU_MODULE)
    package = importlib.import_module(cpu_lora_fix.OPS_PACKAGE)
    cls = punica_cpu.PunicaWrapperCPU
    saved = {m: {n: getattr(m, n) for n in cpu_lora_fix.GROUPED} for m in (ops, package, punica_cpu)}
    methods = {n: cls.__dict__[n] for n in (*cpu_lora_fix.METHODS, cpu_lora_fix.LINEAR)}
    # vLLM as it ships: an earlier test in the session may have loaded the plugin (vLLM loads general plugins when
    # its config/argument code runs), whose import hook then patched these on import
    for module, fns in saved.items():
        for name, fn in fns.items():
            setattr(module, name, _unwrapped(fn))
    for name, fn in methods.items():
        setattr(cls, name, _unwrapped(fn))
    yield punica_cpu
    for module, fns in saved.items():
        for name, fn in fns.items():
            setattr(module, name, fn)
    for name, fn in methods.items():
        setattr(cls, name, fn)


def _unwrapped(fn):  # type: ignore[no-untyped-def]
    while is_wrapped(fn):
        fn = fn.__wrapped__
    return fn


def test_install_patches_ops_and_punica_cpu_once(saved_vllm) -> None:
    punica_cpu = saved_vllm
    replaced = cpu_lora_fix.install_everywhere(punica_cpu, {})
    assert len(replaced) == 9 + 6 + 1
    for module in (ops, punica_cpu):
        for name in cpu_lora_fix.GROUPED:
            assert is_wrapped(getattr(module, name)), (module.__name__, name)
            assert getattr(module, name).__wrapped__ is not cpu_lora_fix.GROUPED[name]
    for name in (*cpu_lora_fix.METHODS, cpu_lora_fix.LINEAR):
        assert is_wrapped(getattr(punica_cpu.PunicaWrapperCPU, name))
    assert cpu_lora_fix.install_everywhere(punica_cpu, {}) == []  # a second registration replaces nothing
    # sgmv_* (prefill) go through the module's bgmv_*: base tokens get no delta there either
    x, a, _, idx = _case()
    out = torch.randn(len(idx), a.shape[2])
    ops.sgmv_shrink(x, a, out, None, torch.tensor([1, 1, 1, 1, 1]), idx, 5, 1, 5, 1.0)
    assert out[0].abs().sum() == 0 and out[1].abs().sum() > 0


@pytest.mark.parametrize(("mode", "methods", "op"), [("stock", False, None), ("masked", False, "masked"),
                                                     ("grouped", True, "grouped"), ("bogus", True, "grouped")])
def test_mode_env_chooses_the_ops(saved_vllm, mode: str, methods: bool, op: str | None) -> None:
    punica_cpu = saved_vllm
    cpu_lora_fix.install_everywhere(punica_cpu, {cpu_lora_fix.MODE_ENV: mode})
    assert is_wrapped(punica_cpu.PunicaWrapperCPU._shrink_decode) == methods
    assert is_wrapped(punica_cpu.PunicaWrapperCPU.add_lora_linear) == methods
    fn = punica_cpu.bgmv_shrink
    if op is None:
        assert not is_wrapped(fn)
    else:
        impl = {"masked": cpu_lora_fix.MASKED, "grouped": cpu_lora_fix.GROUPED}[op]["bgmv_shrink"]
        assert is_wrapped(fn) and getattr(fn, cpu_lora_fix.IMPL_ATTR) is impl


def test_an_op_that_is_not_vllms_is_left_alone_and_logged(saved_vllm, caplog) -> None:
    """Never assume: an op computing something else (another vLLM version, another plugin) is not replaced."""
    module = type(ops)("fake_ops")

    def bgmv_shrink(inputs, weights, out, indices, scaling=1.0):
        out[:] = 0

    module.bgmv_shrink = bgmv_shrink
    module.bgmv_expand = ops.bgmv_expand
    with caplog.at_level(logging.WARNING, logger="tenantserve.vllm_plugin"):
        assert cpu_lora_fix.install(module) == ["bgmv_expand"]
    assert module.bgmv_shrink is bgmv_shrink
    assert "fake_ops.bgmv_shrink" in caplog.text


def test_upstream_masked_ops_are_recognised() -> None:
    """vLLM 0.33 masks -1 itself: the probe accepts that behaviour as well as 0.32's leak."""
    for name, fn in cpu_lora_fix.MASKED.items():
        assert cpu_lora_fix.behaves_like_vllm(name, fn)
        assert cpu_lora_fix.behaves_like_vllm(name, getattr(ops, name).__wrapped__ if is_wrapped(getattr(ops, name))
                                              else getattr(ops, name))


def test_methods_with_other_signatures_are_left_alone(caplog) -> None:
    class Other:
        def _shrink_prefill(self, y, x, w_t_all, scale): ...
        def _shrink_decode(self, y, x, weights, scale): ...  # renamed parameter: not the method we know

    originals = dict(Other.__dict__)
    with caplog.at_level(logging.WARNING, logger="tenantserve.vllm_plugin"):
        assert cpu_lora_fix.install_methods(Other) == []
    assert Other.__dict__["_shrink_prefill"] is originals["_shrink_prefill"]
    assert "unexpected signature" in caplog.text

    class Partial:  # vLLM without one of the six: none replaced (a half-grouped wrapper would mix two groupings)
        def _shrink_prefill(self, y, x, w_t_all, scale): ...

    assert cpu_lora_fix.install_methods(Partial) == []
    assert not is_wrapped(Partial._shrink_prefill)


def test_add_lora_linear_is_replaced_only_where_it_computes_vllms_delta(saved_vllm, caplog) -> None:
    """Never assume: a subclass whose add_lora_linear computes something else, or one with other parameters, keeps
    its own (the grouped leaf ops still apply under vLLM's)."""
    class Other(saved_vllm.PunicaWrapperCPU):
        def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None,
                            **kwargs):
            y.zero_()

    class Renamed(saved_vllm.PunicaWrapperCPU):
        def add_lora_linear(self, y, x, a, b, scale, output_slices, *, buffer=None, **kwargs): ...

    with caplog.at_level(logging.WARNING, logger="tenantserve.vllm_plugin"):
        assert cpu_lora_fix.install_linear(Other) == []
        assert cpu_lora_fix.install_linear(Renamed) == []
    assert not is_wrapped(Other.__dict__["add_lora_linear"]) and not is_wrapped(Renamed.__dict__["add_lora_linear"])
    assert "Other.add_lora_linear is not vLLM 0.32's" in caplog.text
    assert cpu_lora_fix.install_linear(saved_vllm.PunicaWrapperCPU) == ["add_lora_linear"]  # vLLM's own: replaced


def test_fused_add_lora_linear_leaves_calls_it_does_not_cover_to_vllm(saved_vllm, monkeypatch) -> None:
    """A caller's own shrink buffer (vLLM's layers pass none) goes through vLLM's add_lora_linear over the grouped
    leaf ops: same delta, base rows untouched either way."""
    from vllm.lora.layers.utils import LoRAMapping

    punica_cpu = saved_vllm
    cpu_lora_fix.install_everywhere(punica_cpu, {})
    fused = []
    real = cpu_lora_fix.lora_delta.linear
    monkeypatch.setattr(cpu_lora_fix.lora_delta, "linear", lambda *args: fused.append(1) or real(*args))
    x, a, b, idx = _case()
    ids = tuple(i + 1 for i in idx.tolist())
    wrapper = punica_cpu.PunicaWrapperCPU(16, 8, "cpu")
    wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=True), [1, 2, 3], 4, 100)
    y0 = torch.randn(len(idx), a.shape[-1])
    y_fused, y_vllm = y0.clone(), y0.clone()
    wrapper.add_lora_linear(y_fused, x, (a,), (b,), 0.5, (b.shape[2],))
    assert fused == [1]
    wrapper.add_lora_linear(y_vllm, x, (a,), (b,), 0.5, (b.shape[2],), buffer=(torch.zeros(len(idx), a.shape[2]),))
    assert fused == [1]
    expected = y0 + torch.stack([b[i, 0] @ r if i >= 0 else torch.zeros(b.shape[2])
                                 for i, r in zip(idx.tolist(), _reference_shrink(x, a, idx, 0.5))])
    torch.testing.assert_close(y_fused, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_vllm, expected, rtol=1e-5, atol=1e-5)
    base = idx < 0
    assert torch.equal(y_fused[base], y0[base]) and torch.equal(y_vllm[base], y0[base])
