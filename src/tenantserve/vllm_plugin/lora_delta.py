"""The grouped LoRA delta: one shrink and one expand matmul per distinct adapter, over that adapter's rows only.

vLLM 0.32's CPU ops select each token's weights with ``weights[indices]``, a tokens x out x rank copy per op, and
run a batched einsum over it: at Llama-2-7B widths that costs 0.7-5x the base layer's own matmul. Grouping the rows
by slot once per step makes the delta what LoRA promises: about ``rank x (in + out)`` against ``in x out`` per row,
and nothing at all for rows on the base model (slot -1), which are never read or written by ``expand``.

The math per row equals vLLM's: ``out = scale * (x @ A.T)`` and ``y (+)= h @ B.T``, both computed in the output
tensor's dtype like vLLM's ops (the shrink buffer is float32, so the shrink runs in float32 even for bf16 models).
A bf16 product is computed in float32 from the exact bf16 operands and rounded once, as a bf16 GEMM does (AVX2 CPUs
have no fast bf16 GEMM; the float32 one is ~8x faster here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

Rows = Union[slice, torch.Tensor]  # a contiguous run as a slice (no copy), else a long index tensor


@dataclass(frozen=True)
class Grid:
    """The adapter rows of one step laid out for one batched matmul per op: the slots ``first .. first+count-1``
    (every one with rows) each fill one grid row of ``width`` cells with their batch rows, padded with their own
    first row. ``gather`` (count * width) is each cell's batch row; ``valid`` the cells holding real rows, in
    ``RowGroups.flat`` order (None when nothing is padded)."""

    first: int
    count: int
    width: int
    gather: torch.Tensor
    valid: torch.Tensor | None


@dataclass(frozen=True)
class RowGroups:
    """The rows of one batch grouped by LoRA slot: ``slots`` pairs each distinct slot (>= 0) with its rows, ``base``
    holds the rows with no adapter (-1), or None when there are none. Depends only on the token-to-slot mapping.

    ``flat`` lists the adapter rows sorted by slot (then by row) and ``spans`` gives each slot's ``(slot, start,
    end)`` in it. ``order`` is ``flat`` when some slot's rows are scattered (decode batches usually are): the
    single-op functions then gather once, run one matmul per slot on a contiguous span, and scatter once; when
    every slot's rows are one run (``order`` None) they are sliced in place, with no copy at all. ``grid`` is the
    layout ``linear`` uses for one batched matmul per op (None when the slots in use are not consecutive or padding
    would more than double the rows)."""

    rows: int
    slots: tuple[tuple[int, Rows], ...]
    base: Rows | None
    order: torch.Tensor | None = None
    spans: tuple[tuple[int, int, int], ...] = ()
    flat: torch.Tensor | None = None
    grid: Grid | None = None

    @classmethod
    def of(cls, indices: torch.Tensor) -> RowGroups:
        """Group a 1-D tensor of slot indices (-1: base). One ``tolist`` and a Python pass: ~10-60 us for 64-512
        rows, paid once per step when cached (see ``cpu_lora_fix.step_groups``)."""
        members: dict[int, list[int]] = {}
        for row, slot in enumerate(indices.tolist()):
            members.setdefault(slot if slot >= 0 else -1, []).append(row)
        base = members.pop(-1, None)
        groups = sorted(members.items())
        slots = tuple((slot, _rows(rows)) for slot, rows in groups)
        flat: list[int] = []
        spans = []
        for slot, rows in groups:
            spans.append((slot, len(flat), len(flat) + len(rows)))
            flat += rows
        flat_t = torch.tensor(flat, dtype=torch.long) if flat else None
        scattered = not all(isinstance(rows, slice) for _, rows in slots)
        return cls(indices.shape[0], slots, _rows(base) if base else None, flat_t if scattered else None,
                   tuple(spans), flat_t, _grid(groups, len(flat)))

    @property
    def all_base(self) -> bool:
        return not self.slots


def _grid(groups: list[tuple[int, list[int]]], adapter_rows: int) -> Grid | None:
    """The batched layout of ``groups`` (slot, ascending rows), if the slots are consecutive and padding every slot
    to the busiest one's row count at most doubles the rows."""
    if not groups or groups[-1][0] - groups[0][0] + 1 != len(groups):
        return None
    width = max(len(rows) for _, rows in groups)
    if len(groups) * width > 2 * adapter_rows:
        return None
    gather: list[int] = []
    valid: list[int] = []
    for g, (_, rows) in enumerate(groups):
        valid += range(g * width, g * width + len(rows))
        gather += rows + [rows[0]] * (width - len(rows))
    padded = len(valid) < len(gather)
    return Grid(groups[0][0], len(groups), width, torch.tensor(gather, dtype=torch.long),
                torch.tensor(valid, dtype=torch.long) if padded else None)


def _rows(rows: list[int]) -> Rows:
    """Ascending row numbers as a slice when they are one run, else as an index tensor."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.long)


def _zero(t: torch.Tensor, rows: Rows) -> None:
    if isinstance(rows, slice):
        t[rows] = 0
    else:
        t.index_fill_(0, rows, 0)


def _slot_weight(weights: torch.Tensor, slot: int) -> torch.Tensor:
    """``weights[slot]`` as a 2-D (out, in) matrix; vLLM stacks (slots, 1, out, in) or (slots, out, in)."""
    w = weights[slot]
    return w.squeeze(0) if w.dim() == 3 else w


def _operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as vLLM's ops use it (cast to the output dtype), then in the dtype the product is computed in: bf16 and
    fp16 products are accumulated in float32 and rounded once, as their GEMMs do (AVX2 has no fast bf16 GEMM)."""
    t = t.to(dtype)
    return t.to(torch.float32) if dtype in (torch.bfloat16, torch.float16) else t


def _weight(weights: torch.Tensor, slot: int, dtype: torch.dtype, rows: int) -> torch.Tensor:
    w = _slot_weight(weights, slot)[:rows]
    if w.shape[0] != rows:
        raise ValueError(f"LoRA weights give {w.shape[0]} output columns, the output slice has {rows}")
    return _operand(w, dtype)


def shrink(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: RowGroups, scale: float) -> None:
    """``out[r, :rank] = scale * (x[r] @ A[slot(r)].T)`` for adapter rows; 0 for base rows.

    ``x``: (rows, in); ``weights``: (slots, [1,] rank, in); ``out``: (rows, >= rank), written in its own dtype."""
    rank = _slot_weight(weights, 0).shape[0]
    target = out[:, :rank]
    if groups.base is not None:
        _zero(target, groups.base)
    if groups.order is None:
        for slot, rows in groups.slots:
            h = _operand(x[rows], out.dtype) @ _weight(weights, slot, out.dtype, rank).T
            target[rows] = scale * h.to(out.dtype)
        return
    xs = _operand(x.index_select(0, groups.order), out.dtype)
    hs = torch.empty(xs.shape[0], rank, dtype=xs.dtype)
    for slot, start, end in groups.spans:
        torch.mm(xs[start:end], _weight(weights, slot, out.dtype, rank).T, out=hs[start:end])
    target.index_copy_(0, groups.order, scale * hs.to(out.dtype))


def expand(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: RowGroups, offset: int = 0,
           size: int | None = None, add: bool = True) -> None:
    """``out[r, offset:offset+size] (+)= x[r] @ B[slot(r)].T`` for adapter rows; base rows untouched when adding,
    zeroed when not (vLLM's ``add_inputs=False`` sets every row).

    ``x``: (rows, rank); ``weights``: (slots, [1,] out, rank). ``size`` None: the columns the weights and ``out``
    have in common from ``offset`` (vLLM's ``bgmv_expand`` tolerates padding either side); else exactly ``size``
    (``ValueError`` if the weights have another width, as vLLM's op fails on it)."""
    width = _slot_weight(weights, 0).shape[0]
    if size is None:
        size = min(width, out.shape[1] - offset)
    elif width != size:
        raise ValueError(f"LoRA weights give {width} output columns, the output slice has {size}")
    target = out[:, offset : offset + size]
    if not add and groups.base is not None:
        _zero(target, groups.base)
    if groups.order is None:
        for slot, rows in groups.slots:
            h, w = _operand(x[rows], out.dtype), _weight(weights, slot, out.dtype, size)
            if add and h.dtype == out.dtype:
                target[rows].addmm_(h, w.T)  # in place: no delta temporary, one pass over the output
            elif add:
                target[rows] += (h @ w.T).to(out.dtype)
            else:
                target[rows] = (h @ w.T).to(out.dtype)
        return
    hs = _operand(x.index_select(0, groups.order), out.dtype)
    ds = torch.empty(hs.shape[0], size, dtype=hs.dtype)
    for slot, start, end in groups.spans:
        torch.mm(hs[start:end], _weight(weights, slot, out.dtype, size).T, out=ds[start:end])
    if add and target.is_contiguous():
        target.index_add_(0, groups.order, ds.to(out.dtype))
    elif add:  # a column slice: index_add_ takes a slow per-element path on it (~15x), this is the same sum
        target.index_copy_(0, groups.order, target.index_select(0, groups.order) + ds.to(out.dtype))
    else:
        target.index_copy_(0, groups.order, ds.to(out.dtype))


#: Above this many delta elements (adapter rows x output columns) ``linear`` works slice by slice in place instead
#: of building the whole layer's delta at once (prefill batches: 16 MiB of float32).
FUSED_LIMIT = 1 << 22


def fits_linear(y: torch.Tensor, x: torch.Tensor, a_stacked: tuple[torch.Tensor, ...],
                b_stacked: tuple[torch.Tensor, ...], slices: tuple[int, ...], groups: RowGroups) -> bool:
    """Whether ``linear`` covers this call: 2-D ``x`` (rows, in) and ``y`` (rows, sum of slices) with the step's
    rows, one (A, B) pair per slice with matching widths and ranks, and slots for every adapter row. Anything else
    is left to vLLM's own ``add_lora_linear`` (which fails where vLLM fails)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != groups.rows or y.shape[0] != groups.rows:
        return False
    if not (len(a_stacked) == len(b_stacked) == len(slices) > 0) or sum(slices) != y.shape[1]:
        return False
    top = groups.slots[-1][0] if groups.slots else -1
    for a, b, size in zip(a_stacked, b_stacked, slices):
        if a.dim() not in (3, 4) or b.dim() != a.dim() or (a.dim() == 4 and (a.shape[1] != 1 or b.shape[1] != 1)):
            return False
        if a.shape[-1] != x.shape[1] or b.shape[-2] != size or a.shape[-2] != b.shape[-1]:
            return False
        if a.shape[0] <= top or b.shape[0] <= top:
            return False
    return True


def _stack(weights: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Slots ``first .. first+count-1`` of (slots, [1,] out, in) weights as a (count, out, in) view."""
    w = weights[first : first + count]
    return w.squeeze(1) if w.dim() == 4 else w


def linear(y: torch.Tensor, x: torch.Tensor, a_stacked: tuple[torch.Tensor, ...], b_stacked: tuple[torch.Tensor, ...],
           scale: float, slices: tuple[int, ...], groups: RowGroups) -> None:
    """vLLM's ``add_lora_linear`` for one layer: for each slice i, ``y[r, cols_i] += (scale * x[r] @ A_i.T) @ B_i.T``
    for adapter rows; base rows are never read or written. Call ``fits_linear`` first.

    The math is vLLM's: the shrink in float32 (vLLM's shrink buffer), the expand in ``y``'s dtype, the delta rounded
    to it and added once. The work is fused across the slices (q/k/v, gate/up): the adapter rows are gathered once,
    each op is one batched matmul over the slots in use (``RowGroups.grid``) or one matmul per slot, and the whole
    delta is added with one ``index_add_``. Big batches (over ``FUSED_LIMIT`` delta elements) go slice by slice
    through ``shrink`` and ``expand`` in place."""
    if groups.all_base:
        return
    assert groups.flat is not None
    rank = a_stacked[0].shape[-2]
    if groups.flat.shape[0] * y.shape[1] > FUSED_LIMIT:
        offset = 0
        for a, b, size in zip(a_stacked, b_stacked, slices):
            buffer = torch.empty(groups.rows, rank, dtype=torch.float32)
            shrink(x, a, buffer, groups, scale)
            expand(buffer, b, y, groups, offset, size, True)
            offset += size
        return
    grid = groups.grid
    parts = []
    if grid is not None:
        xs = x.index_select(0, grid.gather).to(torch.float32).view(grid.count, grid.width, x.shape[1])
        for a, b, size in zip(a_stacked, b_stacked, slices):
            h = torch.bmm(xs, _stack(a, grid.first, grid.count).to(torch.float32).transpose(1, 2))
            if scale != 1.0:
                h.mul_(scale)
            bw = _operand(_stack(b, grid.first, grid.count), y.dtype)
            parts.append(torch.bmm(_operand(h, y.dtype), bw.transpose(1, 2)))
        delta = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)).view(grid.count * grid.width, y.shape[1])
        if grid.valid is not None:
            delta = delta.index_select(0, grid.valid)
    else:
        xs = x.index_select(0, groups.flat).to(torch.float32)
        for a, b, size in zip(a_stacked, b_stacked, slices):
            h = torch.empty(xs.shape[0], rank, dtype=torch.float32)
            for slot, start, end in groups.spans:
                torch.mm(xs[start:end], _slot_weight(a, slot).to(torch.float32).T, out=h[start:end])
            if scale != 1.0:
                h.mul_(scale)
            hs = _operand(h, y.dtype)
            d = torch.empty(xs.shape[0], size, dtype=hs.dtype)
            for slot, start, end in groups.spans:
                torch.mm(hs[start:end], _weight(b, slot, y.dtype, size).T, out=d[start:end])
            parts.append(d)
        delta = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    y.index_add_(0, groups.flat, delta.to(y.dtype))
