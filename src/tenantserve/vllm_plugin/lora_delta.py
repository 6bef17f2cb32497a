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
class RowGroups:
    """The rows of one batch grouped by LoRA slot: ``slots`` pairs each distinct slot (>= 0) with its rows, ``base``
    holds the rows with no adapter (-1), or None when there are none. Depends only on the token-to-slot mapping.

    When some slot's rows are scattered (decode batches usually are), ``order`` lists the adapter rows sorted by
    slot and ``spans`` gives each slot's ``(slot, start, end)`` in it: the ops then gather once, run one matmul per
    slot on a contiguous span, and scatter once. When every slot's rows are one run (``order`` None) they are
    sliced in place, with no copy at all."""

    rows: int
    slots: tuple[tuple[int, Rows], ...]
    base: Rows | None
    order: torch.Tensor | None = None
    spans: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def of(cls, indices: torch.Tensor) -> RowGroups:
        """Group a 1-D tensor of slot indices (-1: base). One ``tolist`` and a Python pass: ~10-50 us for 64-512
        rows, paid once per step when cached (see ``cpu_lora_fix.step_groups``)."""
        members: dict[int, list[int]] = {}
        for row, slot in enumerate(indices.tolist()):
            members.setdefault(slot if slot >= 0 else -1, []).append(row)
        base = members.pop(-1, None)
        slots = tuple((slot, _rows(rows)) for slot, rows in sorted(members.items()))
        order, spans = None, []
        if not all(isinstance(rows, slice) for _, rows in slots):
            flat: list[int] = []
            for slot, rows in sorted(members.items()):
                spans.append((slot, len(flat), len(flat) + len(rows)))
                flat += rows
            order = torch.tensor(flat, dtype=torch.long)
        return cls(indices.shape[0], slots, _rows(base) if base else None, order, tuple(spans))

    @property
    def all_base(self) -> bool:
        return not self.slots


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
    if add:
        target.index_add_(0, groups.order, ds.to(out.dtype))
    else:
        target.index_copy_(0, groups.order, ds.to(out.dtype))
