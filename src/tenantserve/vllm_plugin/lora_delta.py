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
    holds the rows with no adapter (-1), or None when there are none. Depends only on the token-to-slot mapping."""

    rows: int
    slots: tuple[tuple[int, Rows], ...]
    base: Rows | None

    @classmethod
    def of(cls, indices: torch.Tensor) -> RowGroups:
        """Group a 1-D tensor of slot indices (-1: base). One ``tolist`` and a Python pass: ~10-50 us for 64-512
        rows, paid once per step when cached (see ``cpu_lora_fix.step_groups``)."""
        members: dict[int, list[int]] = {}
        for row, slot in enumerate(indices.tolist()):
            members.setdefault(slot if slot >= 0 else -1, []).append(row)
        base = members.pop(-1, None)
        return cls(indices.shape[0], tuple((slot, _rows(rows)) for slot, rows in sorted(members.items())),
                   _rows(base) if base else None)

    @property
    def all_base(self) -> bool:
        return not self.slots


def _rows(rows: list[int]) -> Rows:
    """Ascending row numbers as a slice when they are one run, else as an index tensor."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, dtype=torch.long)


def _take(t: torch.Tensor, rows: Rows) -> torch.Tensor:
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


def _put(t: torch.Tensor, rows: Rows, value: torch.Tensor, add: bool) -> None:
    if isinstance(rows, slice):
        if add:
            t[rows] += value
        else:
            t[rows] = value
    elif add:
        t.index_add_(0, rows, value)
    else:
        t.index_copy_(0, rows, value)


def _zero(t: torch.Tensor, rows: Rows) -> None:
    if isinstance(rows, slice):
        t[rows] = 0
    else:
        t.index_fill_(0, rows, 0)


def _slot_weight(weights: torch.Tensor, slot: int) -> torch.Tensor:
    """``weights[slot]`` as a 2-D (out, in) matrix; vLLM stacks (slots, 1, out, in) or (slots, out, in)."""
    w = weights[slot]
    return w.squeeze(0) if w.dim() == 3 else w


def _matmul_t(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x @ w.T`` in ``dtype``, the way vLLM's ops compute it (operands cast to ``dtype``); bf16/fp16 products are
    accumulated in float32 (from operands rounded to ``dtype``, as vLLM's) and rounded once."""
    if dtype in (torch.bfloat16, torch.float16):
        return (x.to(dtype).to(torch.float32) @ w.to(dtype).to(torch.float32).T).to(dtype)
    return x.to(dtype) @ w.to(dtype).T


def shrink(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: RowGroups, scale: float) -> None:
    """``out[r, :rank] = scale * (x[r] @ A[slot(r)].T)`` for adapter rows; 0 for base rows.

    ``x``: (rows, in); ``weights``: (slots, [1,] rank, in); ``out``: (rows, >= rank), written in its own dtype."""
    rank = _slot_weight(weights, 0).shape[0]
    target = out[:, :rank]
    if groups.base is not None:
        _zero(target, groups.base)
    for slot, rows in groups.slots:
        _put(target, rows, scale * _matmul_t(_take(x, rows), _slot_weight(weights, slot), out.dtype), add=False)


def expand(x: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, groups: RowGroups, offset: int = 0,
           size: int | None = None, add: bool = True) -> None:
    """``out[r, offset:offset+size] (+)= x[r] @ B[slot(r)].T`` for adapter rows; base rows untouched when adding,
    zeroed when not (vLLM's ``add_inputs=False`` sets every row).

    ``x``: (rows, rank); ``weights``: (slots, [1,] out, rank). ``size`` None: the columns the weights and ``out``
    have in common from ``offset`` (vLLM's ``bgmv_expand`` tolerates padding either side); else exactly ``size``."""
    trim = size is None
    if size is None:
        size = min(_slot_weight(weights, 0).shape[0], out.shape[1] - offset)
    target = out[:, offset : offset + size]
    if not add and groups.base is not None:
        _zero(target, groups.base)
    for slot, rows in groups.slots:
        w = _slot_weight(weights, slot)
        w = w[:size] if trim else w
        h = _take(x, rows)
        if add and isinstance(rows, slice) and out.dtype == torch.float32:
            target[rows].addmm_(h.to(out.dtype), w.to(out.dtype).T)  # in place: no delta temporary, one pass over y
        else:
            _put(target, rows, _matmul_t(h, w, out.dtype), add=add)
