"""Tensor names and shapes from safetensors headers, without loading a single weight.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets) and
the data. Reading the header tells the shapes of a 12.5 GiB model in microseconds and proves the file is complete:
a truncated download is shorter than the header says.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from tenantserve.errors import AdapterError, TenantserveError

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_header(
    path: Path, *, label: str, error: type[TenantserveError] = AdapterError
) -> dict[str, TensorInfo]:
    """Tensor infos of one safetensors file; ``AdapterError`` (weights_truncated / weights_invalid) if it is damaged."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _truncated(error, label, path, f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise _invalid(error, label, path, f"header length {n} is not plausible")
            raw = fh.read(n)
    except OSError as exc:
        raise error(f"{label}: cannot read {path}: {exc.strerror}", code="weights_unreadable") from None
    if len(raw) < n:
        raise _truncated(error, label, path, f"header says {n} bytes of JSON, file has {len(raw)}")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _invalid(error, label, path, "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _invalid(error, label, path, "header is not a JSON object")
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = str(info["dtype"]), tuple(int(d) for d in info["shape"]), info["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise _invalid(error, label, path, f"tensor {name!r} has a malformed entry") from None
        width = _DTYPE_BYTES.get(dtype)
        if width is None or end < begin or (end - begin) != math.prod(shape) * width:
            raise _invalid(error, label, path, f"tensor {name!r}: {dtype} {list(shape)} does not fit bytes {begin}..{end}")
        tensors[name] = TensorInfo(dtype, shape)
        data_end = max(data_end, end)
    have = size - 8 - n
    if have < data_end:
        raise _truncated(error, label, path, f"{have} bytes of tensor data, header needs {data_end}")
    return tensors


def read_headers(
    paths: list[Path], *, label: str, error: type[TenantserveError] = AdapterError
) -> dict[str, TensorInfo]:
    """All tensors of a (possibly sharded) checkpoint."""
    tensors: dict[str, TensorInfo] = {}
    for path in paths:
        tensors.update(read_header(path, label=label, error=error))
    return tensors


def dtype_bytes(path: Path, *, label: str) -> int:
    """Bytes per element of a safetensors file's first tensor (header only); 4 when it holds no tensor."""
    tensors = read_header(path, label=label)
    first = next(iter(tensors.values()), None)
    return _DTYPE_BYTES[first.dtype] if first else 4


def _truncated(error: type[TenantserveError], label: str, path: Path, detail: str) -> TenantserveError:
    return error(f"{label}: {path.name} is truncated ({detail}); copy it again", code="weights_truncated")


def _invalid(error: type[TenantserveError], label: str, path: Path, detail: str) -> TenantserveError:
    return error(f"{label}: {path.name} is not a valid safetensors file ({detail})", code="weights_invalid")
