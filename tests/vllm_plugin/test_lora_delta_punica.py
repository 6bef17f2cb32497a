"""vLLM's real PunicaWrapperCPU with tenantserve's grouped methods installed, driven the way vLLM's LoRA layers
drive it (``update_metadata`` then ``add_lora_linear``/``add_lora_embedding``/``add_lora_logits``), against a float64
reference and against vLLM's own ops. Random mappings, ranks, packed slices and ragged prefill segments (Hypothesis)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantserve.vllm_plugin import cpu_lora_fix, lora_delta
from tenantserve.vllm_plugin.patching import is_wrapped

punica_cpu = importlib.import_module(cpu_lora_fix.PUNICA_CPU_MODULE)
ops = importlib.import_module(cpu_lora_fix.OPS_MODULE)
from vllm.lora.layers.utils import LoRAMapping  # noqa: E402  (after vLLM's punica module, like vLLM itself)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])
HIDDEN = 32


@pytest.fixture(scope="module", autouse=True)
def grouped() -> Iterator[None]:
    """Install the grouped ops and methods for this module's tests; restore vLLM's afterwards."""
    cls = punica_cpu.PunicaWrapperCPU
    modules = [ops, importlib.import_module(cpu_lora_fix.OPS_PACKAGE), punica_cpu]
    saved_ops = {m: {n: getattr(m, n) for n in cpu_lora_fix.GROUPED} for m in modules}
    saved_methods = {n: cls.__dict__[n] for n in (*cpu_lora_fix.METHODS, cpu_lora_fix.LINEAR)}
    cpu_lora_fix.install_everywhere(punica_cpu, {})
    assert all(is_wrapped(getattr(cls, n)) for n in saved_methods)  # add_lora_linear: the fused one
    yield
    for module, fns in saved_ops.items():
        for name, fn in fns.items():
            setattr(module, name, fn)
    for name, fn in saved_methods.items():
        setattr(cls, name, fn)


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """(slots, requests as (lora id or 0 for the base, tokens)): ragged prefill segments, decode rows of 1 token,
    all-base and all-adapter batches."""
    slots = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["mixed", "all_base", "all_adapter"]))
    ids = {"mixed": st.integers(0, slots), "all_base": st.just(0), "all_adapter": st.integers(1, slots)}[kind]
    tokens = st.just(1) if draw(st.booleans()) else st.integers(1, 7)
    return slots, draw(st.lists(st.tuples(ids, tokens), min_size=1, max_size=9))


def _wrapper(slots: int, requests: list[tuple[int, int]]) -> tuple[object, list[int], list[int]]:
    """A PunicaWrapperCPU after ``update_metadata`` (slot i holds lora id i+1); returns it with per-token and
    per-request slot indices."""
    wrapper = punica_cpu.PunicaWrapperCPU(256, 64, "cpu")
    token_ids = [lora for lora, n in requests for _ in range(n)]
    mapping = LoRAMapping(tuple(token_ids), tuple(lora for lora, _ in requests), is_prefill=True)
    wrapper.update_metadata(mapping, list(range(1, slots + 1)), slots, 100)
    return wrapper, [i - 1 for i in token_ids], [lora - 1 for lora, _ in requests]


def _ref_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: list[int], scale: float) -> torch.Tensor:
    """float64, row by row: scale * x @ A.T @ B.T for adapter rows, 0 for base rows."""
    out = torch.zeros(x.shape[0], b.shape[-2], dtype=torch.float64)
    for t, s in enumerate(slots):
        if s >= 0:
            out[t] = b[s, 0].double() @ (scale * (a[s, 0].double() @ x[t].double()))
    return out


@SETTINGS
@given(batches(), st.sampled_from([1, 8, 16]), st.lists(st.integers(4, 24), min_size=1, max_size=3),
       st.integers(0, 2**31 - 1))
def test_add_lora_linear_matches_float64_and_leaves_base_rows_bit_identical(batch, rank, slices, seed) -> None:
    slots, requests = batch
    wrapper, token_slots, _ = _wrapper(slots, requests)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(token_slots), HIDDEN, generator=g)
    a = tuple(torch.randn(slots, 1, rank, HIDDEN, generator=g) for _ in slices)
    b = tuple(torch.randn(slots, 1, n, rank, generator=g) for n in slices)
    y0 = torch.randn(len(token_slots), sum(slices), generator=g)  # the base layer's output
    y = y0.clone()
    wrapper.add_lora_linear(y, x, a, b, 0.5, tuple(slices))
    ref = torch.cat([_ref_delta(x, ai, bi, token_slots, 0.5) for ai, bi in zip(a, b)], dim=1) + y0.double()
    base = torch.tensor([s < 0 for s in token_slots])
    torch.testing.assert_close(y[~base].double(), ref[~base], rtol=1e-5, atol=1e-5)
    assert torch.equal(y[base], y0[base])  # bit-identical to LoRA off


@SETTINGS
@given(batches(), st.integers(0, 2**31 - 1))
def test_add_lora_logits_and_embedding_group_by_their_own_indices(batch, seed) -> None:
    slots, requests = batch
    wrapper, token_slots, request_slots = _wrapper(slots, requests)
    g = torch.Generator().manual_seed(seed)
    # logits: one row per request (sampler indices), vocab padded wider than the logits
    h = torch.randn(len(requests), HIDDEN, generator=g)
    a = torch.randn(slots, 1, 8, HIDDEN, generator=g)
    b = torch.randn(slots, 1, 40, 8, generator=g)
    logits0 = torch.randn(len(requests), 36, generator=g)
    logits = logits0.clone()
    wrapper.add_lora_logits(logits, h, a, b, 1.0)
    expected = logits0.double() + _ref_delta(h, a, b, request_slots, 1.0)[:, :36]
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)
    # embeddings: expand only, per token
    e = torch.randn(len(token_slots), 8, generator=g)
    emb0 = torch.randn(len(token_slots), HIDDEN, generator=g)
    emb = emb0.clone()
    eb = torch.randn(slots, 1, HIDDEN, 8, generator=g)
    wrapper.add_lora_embedding(emb, e, eb, add_input=True)
    expected = emb0.double()
    for t, s in enumerate(token_slots):
        if s >= 0:
            expected[t] += eb[s, 0].double() @ e[t].double()
    torch.testing.assert_close(emb.double(), expected, rtol=1e-5, atol=1e-5)
    base = torch.tensor([s < 0 for s in token_slots])
    assert torch.equal(emb[base], emb0[base])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adapter_rows_equal_vllms_own_ops(dtype: torch.dtype) -> None:
    """Same inputs through vLLM's stock ops and the grouped methods: adapter rows agree (float32 to 1e-5 relative,
    bf16 to its rounding); base rows differ only where vLLM leaks the last slot."""
    requests = [(1, 5), (0, 3), (3, 4), (2, 1), (0, 2), (1, 1)]
    wrapper, token_slots, _ = _wrapper(3, requests)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(len(token_slots), 64, generator=g).to(dtype)
    a = (torch.randn(3, 1, 16, 64, generator=g).to(dtype),)
    b = (torch.randn(3, 1, 48, 16, generator=g).to(dtype),)
    y0 = torch.randn(len(token_slots), 48, generator=g).to(dtype)
    grouped_y = y0.clone()
    wrapper.add_lora_linear(grouped_y, x, a, b, 1.0, (48,))
    stock_y = y0.clone()
    shrunk = torch.zeros(len(token_slots), 16)
    stock = {n: getattr(ops, n).__wrapped__ for n in ("bgmv_shrink", "bgmv_expand_slice")}
    indices = torch.tensor(token_slots)
    stock["bgmv_shrink"](x, a[0], shrunk, indices, 1.0)
    stock["bgmv_expand_slice"](shrunk, b[0], stock_y, indices, 0, 48, True)
    adapter = indices >= 0
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 2e-2}
    torch.testing.assert_close(grouped_y[adapter], stock_y[adapter], **tol)
    assert torch.equal(grouped_y[~adapter], y0[~adapter])
    assert not torch.equal(stock_y[~adapter], y0[~adapter])  # vLLM 0.32's leak, for contrast


def test_groups_are_computed_once_per_step_and_renewed_by_the_next_mapping(monkeypatch) -> None:
    wrapper, token_slots, _ = _wrapper(2, [(1, 3), (0, 2), (2, 3)])
    calls = []
    real = lora_delta.RowGroups.of
    monkeypatch.setattr(cpu_lora_fix.RowGroups, "of", classmethod(lambda cls, idx: calls.append(1) or real(idx)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, HIDDEN, generator=g)
    a = (torch.randn(2, 1, 4, HIDDEN, generator=g),) * 2
    b = (torch.randn(2, 1, 6, 4, generator=g),) * 2
    for _layer in range(5):
        wrapper.add_lora_linear(torch.zeros(8, 12), x, a, b, 1.0, (6, 6))
    assert len(calls) == 1
    # same length, different slots: the cache must not serve the old grouping
    mapping = LoRAMapping((2, 2, 2, 1, 1, 0, 0, 0), (2, 1, 0), is_prefill=True)
    wrapper.update_metadata(mapping, [1, 2], 2, 100)
    y = torch.zeros(8, 12)
    wrapper.add_lora_linear(y, x, a, b, 1.0, (6, 6))
    assert len(calls) == 2
    expected = torch.cat([_ref_delta(x, a[0], b[0], [1, 1, 1, 0, 0, -1, -1, -1], 1.0)] * 2, dim=1)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_all_base_prefill_takes_vllms_short_cut() -> None:
    wrapper, _, _ = _wrapper(2, [(0, 4), (0, 3)])
    assert wrapper.no_lora
    x = torch.randn(7, HIDDEN)
    y0 = torch.randn(7, 6)
    y = y0.clone()
    wrapper.add_lora_linear(y, x, (torch.randn(2, 1, 4, HIDDEN),), (torch.randn(2, 1, 6, 4),), 1.0, (6,))
    assert torch.equal(y, y0)
