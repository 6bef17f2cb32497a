"""Tensor names and shapes from safetensors headers, without loading a single weight; and the one bounded read that
every untrusted file (adapter config, stamp, safetensors header) goes through.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets) and
the data. Reading the header tells the shapes of a 12.5 GiB model in microseconds and proves the file is complete:
a truncated download is shorter than the header says.

Tenants write their own adapter folders: a file may be huge, a FIFO (an open() that never returns), a device
(``/dev/zero``: endless) or have a NUL byte in its name. ``open_untrusted`` opens without blocking and accepts only
regular files; ``read_bounded`` never reads more than its limit (+1 byte, to tell "too large").

``who`` (every function here, and across admission): how an error message names what is being read, its first
words (``adapter 'sql'``, ``base at /models/llama``). Not a Prometheus label: it is never counted, only shown.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tenantserve.errors import AdapterError, TenantserveError

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
#: An adapter's safetensors header: a rank-64 adapter of every linear layer of a 70B model is ~1,100 tensors, ~150 KiB.
ADAPTER_HEADER_LIMIT = 16 << 20
#: A base shard's header (operator-provided, so generous: the largest MoE shards list tens of thousands of tensors).
BASE_HEADER_LIMIT = 100 << 20
_MAX_DIMS = 16
_CHUNK = 64 << 10


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header: ``dtype`` as safetensors spells it (``F32``, ``BF16``, ...), ``shape`` in
    elements, outermost first (a linear weight is (out, in))."""

    dtype: str
    shape: tuple[int, ...]


@contextmanager
def open_untrusted(
    path: Path, *, who: str, unreadable: str, error: type[TenantserveError] = AdapterError
) -> Iterator[tuple[BinaryIO, int]]:
    """Open a regular file for reading without blocking; yield (file, size in bytes).

    ``FileNotFoundError`` passes through (the caller decides whether absence is an error). A NUL byte or another
    unusable name: ``error`` with code ``path_invalid``; a FIFO, socket, device or directory: ``file_not_regular``
    (the adapter store's code for the same fault). Other OS errors: ``error`` with code ``unreadable``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except ValueError as exc:  # "embedded null byte"
        raise error(f"{who}: {_show(path)} is not a usable path ({exc})", code="path_invalid") from None
    except OSError as exc:
        raise error(f"{who}: cannot read {_show(path)}: {exc.strerror}", code=unreadable) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{who}: {_show(path)} is not a regular file", code="file_not_regular")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            yield fh, st.st_size
    finally:
        os.close(fd)


def read_bounded(
    path: Path, limit: int, *, who: str, too_large: str, unreadable: str,
    error: type[TenantserveError] = AdapterError,
) -> bytes:
    """The whole of a small untrusted file: at most ``limit`` bytes are ever read.

    Larger (now, or grown while read): ``error`` with code ``too_large``. Errors as ``open_untrusted``.
    """
    with open_untrusted(path, who=who, unreadable=unreadable, error=error) as (fh, size):
        if size > limit:
            raise _too_large(error, who, path, size, limit, too_large)
        chunks: list[bytes] = []
        total = 0
        try:
            while total <= limit:  # in chunks: a read(limit) would allocate the whole limit for a small file
                chunk = fh.read(min(_CHUNK, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise error(f"{who}: cannot read {_show(path)}: {exc.strerror}", code=unreadable) from None
    if total > limit:  # it grew while read
        raise _too_large(error, who, path, total, limit, too_large)
    return b"".join(chunks)


def read_header(
    path: Path, *, who: str, error: type[TenantserveError] = AdapterError, limit: int = ADAPTER_HEADER_LIMIT
) -> dict[str, TensorInfo]:
    """Tensor infos of one safetensors file whose header is at most ``limit`` bytes.

    ``error`` (default ``AdapterError``) with code weights_missing, weights_unreadable, path_invalid,
    weights_header_too_large, weights_truncated or weights_invalid.
    """
    try:
        with open_untrusted(path, who=who, unreadable="weights_unreadable", error=error) as (fh, size):
            try:
                head = fh.read(8)
                if len(head) < 8:
                    raise _truncated(error, who, path, f"{size} bytes, shorter than the 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                if n > limit:
                    if n > size:
                        raise _invalid(error, who, path, f"header length {n} is not plausible")
                    raise error(f"{who}: {path.name} has a {n}-byte header, above the {limit}-byte limit for "
                                "this file", code="weights_header_too_large")
                if n > size - 8:
                    raise _truncated(error, who, path, f"header says {n} bytes of JSON, file has {size - 8}")
                raw = fh.read(n)
            except OSError as exc:
                raise error(f"{who}: cannot read {path}: {exc.strerror}", code="weights_unreadable") from None
    except FileNotFoundError:
        raise error(f"{who}: {path} not found", code="weights_missing") from None
    if len(raw) < n:
        raise _truncated(error, who, path, f"header says {n} bytes of JSON, file has {len(raw)}")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid(error, who, path, "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _invalid(error, who, path, "header is not a JSON object")
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, dims, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not isinstance(dtype, str) or not isinstance(dims, list) or len(dims) > _MAX_DIMS:
                raise ValueError(dims)
            shape, begin, end = tuple(_dim(d) for d in dims), _dim(begin), _dim(end)
        except (KeyError, TypeError, ValueError):
            raise _invalid(error, who, path, f"tensor {_short(name)} has a malformed entry") from None
        width = _DTYPE_BYTES.get(dtype)
        if width is None or end < begin or (end - begin) != math.prod(shape) * width:
            raise _invalid(error, who, path,
                           f"tensor {_short(name)}: {_short(dtype)} {list(shape)[:8]} does not fit bytes {begin}..{end}")
        tensors[name] = TensorInfo(dtype, shape)
        data_end = max(data_end, end)
    have = size - 8 - n
    if have < data_end:
        raise _truncated(error, who, path, f"{have} bytes of tensor data, header needs {data_end}")
    return tensors


def read_headers(
    paths: list[Path], *, who: str, error: type[TenantserveError] = AdapterError, limit: int = ADAPTER_HEADER_LIMIT
) -> dict[str, TensorInfo]:
    """All tensors of a (possibly sharded) checkpoint, by name (a name in two shards: the later one's). Errors as
    ``read_header``."""
    tensors: dict[str, TensorInfo] = {}
    for path in paths:
        tensors.update(read_header(path, who=who, error=error, limit=limit))
    return tensors


def dtype_bytes(path: Path, *, who: str) -> int:
    """Bytes per element of a safetensors file's first tensor (header only); 4 when it holds no tensor. Errors as
    ``read_header``."""
    tensors = read_header(path, who=who)
    first = next(iter(tensors.values()), None)
    return _DTYPE_BYTES[first.dtype] if first else 4


def _dim(value: object) -> int:
    """A non-negative JSON integer (not a bool, float or string: ``int("9" * 5000)`` would be slow and wrong)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 1 << 63:
        raise ValueError(value)
    return value


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _show(path: Path) -> str:
    return _short(str(path), 200)


def _too_large(error: type[TenantserveError], who: str, path: Path, size: int, limit: int,
               code: str) -> TenantserveError:
    return error(f"{who}: {path.name} is larger than {limit} bytes (at least {size}); refused unread", code=code)


def _truncated(error: type[TenantserveError], who: str, path: Path, detail: str) -> TenantserveError:
    return error(f"{who}: {path.name} is truncated ({detail}); copy it again", code="weights_truncated")


def _invalid(error: type[TenantserveError], who: str, path: Path, detail: str) -> TenantserveError:
    return error(f"{who}: {path.name} is not a valid safetensors file ({detail})", code="weights_invalid")
