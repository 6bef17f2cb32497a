"""The grouped LoRA delta (pure core) against a float64 reference, over random mappings (Hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unittest import mock

from tenantserve.vllm_plugin import lora_delta
from tenantserve.vllm_plugin.lora_delta import RowGroups, expand, fits_linear, linear, shrink

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mappings(draw: st.DrawFn) -> tuple[int, list[int]]:
    """(slots, per-row slot indices): ragged runs of one slot or the base (-1), including all-base and all-adapter."""
    slots = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["mixed", "all_base", "all_adapter"]))
    choices = {"mixed": st.integers(-1, slots - 1), "all_base": st.just(-1),
               "all_adapter": st.integers(0, slots - 1)}[kind]
    runs = draw(st.lists(st.tuples(choices, st.integers(1, 9)), min_size=1, max_size=8))
    return slots, [slot for slot, n in runs for _ in range(n)]


def _reference(x: torch.Tensor, w: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Row by row ``x[t] @ w[idx[t]].T`` in float64; zero rows for -1."""
    out = torch.zeros(len(indices), w.shape[-2], dtype=torch.float64)
    for t, i in enumerate(indices):
        if i >= 0:
            out[t] = w[i].reshape(w.shape[-2], w.shape[-1]).double() @ x[t].double()
    return out


@given(mappings())
def test_row_groups_partition_the_rows_by_slot(case: tuple[int, list[int]]) -> None:
    _, indices = case
    groups = RowGroups.of(torch.tensor(indices))
    seen: dict[int, int] = {}
    for slot, rows in groups.slots + ((-1, groups.base),) if groups.base is not None else groups.slots:
        for r in torch.arange(groups.rows)[rows].tolist():
            assert r not in seen
            seen[r] = slot
    assert groups.rows == len(indices)
    assert seen == dict(enumerate(indices))
    assert groups.all_base == all(i < 0 for i in indices)


@SETTINGS
@given(mappings(), st.sampled_from([1, 4, 16]), st.floats(0.25, 2.0), st.integers(0, 2**31 - 1))
def test_shrink_matches_float64_and_zeroes_base_rows(case, rank: int, scale: float, seed: int) -> None:
    slots, indices = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(indices), 24, generator=g)
    a = torch.randn(slots, 1, rank, 24, generator=g)
    out = torch.randn(len(indices), rank + 3, generator=g)  # wider than the rank: extra columns untouched
    before = out.clone()
    shrink(x, a, out, RowGroups.of(torch.tensor(indices)), scale)
    ref = scale * _reference(x, a, indices)
    torch.testing.assert_close(out[:, :rank].double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, rank:], before[:, rank:])


@SETTINGS
@given(mappings(), st.sampled_from([1, 4, 16]), st.booleans(), st.integers(0, 8), st.integers(0, 2**31 - 1))
def test_expand_slice_adds_to_adapter_rows_only(case, rank: int, add: bool, offset: int, seed: int) -> None:
    slots, indices = case
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(len(indices), rank, generator=g)
    b = torch.randn(slots, 1, 20, rank, generator=g)
    y0 = torch.randn(len(indices), offset + 20 + 5, generator=g)
    y = y0.clone()
    expand(h, b, y, RowGroups.of(torch.tensor(indices)), offset, 20, add)
    ref = _reference(h, b, indices)
    adapter = torch.tensor([i >= 0 for i in indices])
    region = y[:, offset:offset + 20]
    expected = (y0[:, offset:offset + 20].double() if add else 0) + ref
    torch.testing.assert_close(region[adapter].double(), expected[adapter], rtol=1e-5, atol=1e-5)
    if add:  # base rows bit-identical: never read or written
        assert torch.equal(region[~adapter], y0[:, offset:offset + 20][~adapter])
    else:  # vLLM's add_inputs=False sets every row: the base ones to 0
        assert torch.equal(region[~adapter], torch.zeros_like(region[~adapter]))
    assert torch.equal(y[:, :offset], y0[:, :offset]) and torch.equal(y[:, offset + 20:], y0[:, offset + 20:])


@SETTINGS
@given(mappings(), st.integers(-4, 4), st.integers(0, 2**31 - 1))
def test_expand_without_size_covers_the_common_columns(case, pad: int, seed: int) -> None:
    """vLLM's bgmv_expand tolerates weights wider or narrower than the output (vocab padding)."""
    slots, indices = case
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(len(indices), 4, generator=g)
    b = torch.randn(slots, 1, 12, 4, generator=g)
    y0 = torch.randn(len(indices), 12 + pad, generator=g)
    y = y0.clone()
    expand(h, b, y, RowGroups.of(torch.tensor(indices)), add=True)
    common = min(12, 12 + pad)
    expected = y0.double()
    expected[:, :common] += _reference(h, b, indices)[:, :common]
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_bf16_expand_is_within_bf16_rounding_of_float64() -> None:
    g = torch.Generator().manual_seed(3)
    indices = [0, 0, -1, 2, 1, -1, 2]
    h = torch.randn(len(indices), 16, generator=g)
    b = torch.randn(3, 1, 64, 16, generator=g).to(torch.bfloat16)
    y0 = torch.randn(len(indices), 64, generator=g).to(torch.bfloat16)
    y = y0.clone()
    expand(h, b, y, RowGroups.of(torch.tensor(indices)), 0, 64, True)
    ref = y0.double() + _reference(h.to(torch.bfloat16), b, indices)
    adapter = torch.tensor([i >= 0 for i in indices])
    torch.testing.assert_close(y[adapter].double(), ref[adapter], rtol=2e-2, atol=5e-2)
    assert torch.equal(y[~adapter], y0[~adapter])


def test_scattered_rows_gather_once_and_one_run_per_slot_is_sliced() -> None:
    scattered = RowGroups.of(torch.tensor([0, 1, -1, 0, 1]))
    assert scattered.order is not None and scattered.order.tolist() == [0, 3, 1, 4]
    assert scattered.spans == ((0, 0, 2), (1, 2, 4))
    runs = RowGroups.of(torch.tensor([1, 1, -1, 0, 0, -1]))
    assert runs.order is None and runs.slots == ((0, slice(3, 5)), (1, slice(0, 2)))


def test_expand_refuses_a_slice_of_another_width() -> None:
    """vLLM's op fails on it (shape mismatch); silently adding part of the delta would be worse."""
    import pytest

    with pytest.raises(ValueError, match="output columns"):
        expand(torch.randn(2, 4), torch.randn(1, 1, 12, 4), torch.zeros(2, 20), RowGroups.of(torch.tensor([0, 0])),
               0, 10, True)


def _linear_case(slots: int, indices: list[int], rank: int, widths: list[int], seed: int,
                 dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(indices), 24, generator=g).to(dtype)
    a = tuple(torch.randn(slots, 1, rank, 24, generator=g).to(dtype) for _ in widths)
    b = tuple(torch.randn(slots, 1, n, rank, generator=g).to(dtype) for n in widths)
    y0 = torch.randn(len(indices), sum(widths), generator=g).to(dtype)  # the base layer's output
    return x, a, b, y0


def _linear_reference(x, a, b, y0, indices: list[int], scale: float, dtype: torch.dtype = torch.float32):
    """float64, row by row, slice by slice: y0 + (scale * x @ A.T) @ B.T for adapter rows (the shrink's result
    rounded to ``dtype`` first, as vLLM's expand casts its input)."""
    deltas = []
    for ai, bi in zip(a, b):
        h = (scale * _reference(x, ai, indices)).float().to(dtype)
        deltas.append(_reference(h, bi, indices))
    return y0.double() + torch.cat(deltas, dim=1)


@SETTINGS
@given(mappings(), st.sampled_from([1, 4, 16]), st.lists(st.integers(1, 20), min_size=1, max_size=3),
       st.sampled_from([1.0, 0.5, 2.0]), st.booleans(), st.integers(0, 2**31 - 1))
def test_linear_matches_float64_and_leaves_base_rows_bit_identical(case, rank: int, widths: list[int], scale: float,
                                                                    big: bool, seed: int) -> None:
    """Every layout: the batched grid (consecutive slots, padded or not), one matmul per slot (slots with a gap,
    very uneven rows) and, for batches over ``FUSED_LIMIT``, slice by slice in place."""
    slots, indices = case
    x, a, b, y0 = _linear_case(slots, indices, rank, widths, seed)
    y = y0.clone()
    groups = RowGroups.of(torch.tensor(indices))
    assert fits_linear(y, x, a, b, tuple(widths), groups)
    with mock.patch.object(lora_delta, "FUSED_LIMIT", 0 if big else lora_delta.FUSED_LIMIT):
        linear(y, x, a, b, scale, tuple(widths), groups)
    adapter = torch.tensor([i >= 0 for i in indices])
    ref = _linear_reference(x, a, b, y0, indices, scale)
    torch.testing.assert_close(y[adapter].double(), ref[adapter], rtol=1e-5, atol=1e-5)
    assert torch.equal(y[~adapter], y0[~adapter])  # never read or written: bit-identical to LoRA off


def test_bf16_linear_is_within_bf16_rounding_of_float64() -> None:
    for layout in ([0, 0, -1, 2, 1, -1, 2, 1], [0, 0, -1, 2, 2, -1, 2, 2, 2, 2]):  # grid; per-slot matmuls (gap)
        x, a, b, y0 = _linear_case(3, layout, 16, [64, 32], 5, torch.bfloat16)
        y = y0.clone()
        linear(y, x, a, b, 1.0, (64, 32), RowGroups.of(torch.tensor(layout)))
        assert y.dtype == torch.bfloat16
        adapter = torch.tensor([i >= 0 for i in layout])
        ref = _linear_reference(x, a, b, y0, layout, 1.0, torch.bfloat16)
        torch.testing.assert_close(y[adapter].double(), ref[adapter], rtol=2e-2, atol=5e-2)
        assert torch.equal(y[~adapter], y0[~adapter])


def test_grid_pads_consecutive_slots_and_gives_up_on_gaps_or_uneven_rows() -> None:
    even = RowGroups.of(torch.tensor([1, 0, -1, 0, 1, 2, 2, -1]))
    assert even.grid is not None and (even.grid.first, even.grid.count, even.grid.width) == (0, 3, 2)
    assert even.grid.gather.tolist() == [1, 3, 0, 4, 5, 6] and even.grid.valid is None
    assert even.flat is not None and even.flat.tolist() == [1, 3, 0, 4, 5, 6]
    padded = RowGroups.of(torch.tensor([2, 1, 1, -1, 1]))  # slot 1: 3 rows, slot 2: 1 row, padded with its own
    assert padded.grid is not None and padded.grid.gather.tolist() == [1, 2, 4, 0, 0, 0]
    assert padded.grid.valid is not None and padded.grid.valid.tolist() == [0, 1, 2, 3]
    assert RowGroups.of(torch.tensor([0, 2, 2])).grid is None  # slot 1 unused: the slots are not consecutive
    assert RowGroups.of(torch.tensor([0] * 7 + [1, 2])).grid is None  # 3 x 7 cells for 9 rows
    assert RowGroups.of(torch.tensor([-1, -1])).grid is None and RowGroups.of(torch.tensor([-1])).flat is None


def test_fits_linear_refuses_what_linear_does_not_cover() -> None:
    groups = RowGroups.of(torch.tensor([0, -1, 1]))
    x, a, b, y = _linear_case(2, [0, -1, 1], 4, [6, 5], 0)
    assert fits_linear(y, x, a, b, (6, 5), groups)
    assert not fits_linear(y[:2], x[:2], a, b, (6, 5), groups)  # rows other than the step's
    assert not fits_linear(y, x, a, b, (5, 6), groups)  # slice widths other than the weights'
    assert not fits_linear(y[:, :10], x, a, b, (6, 5), groups)  # the slices do not cover the output
    assert not fits_linear(y, x[:, :20], a, b, (6, 5), groups)  # input width
    assert not fits_linear(y, x, a[:1], b, (6, 5), groups)
    assert not fits_linear(y, x, tuple(w[:1] for w in a), b, (6, 5), groups)  # slot 1 beyond the stack
    assert not fits_linear(y.unsqueeze(0), x, a, b, (6, 5), groups)
