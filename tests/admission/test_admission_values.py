"""Admission refuses adapters whose numbers would poison the shared engine (NaN/inf weights, extreme values or
scalings, non-float dtypes): on vLLM's CPU path one NaN adapter emptied every tenant's answers (hostile testing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tenantserve.admission.adapter_dir import write_stamp
from tenantserve.admission.admit import admit
from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.weight_values import MAX_ABS_WEIGHT, MAX_SCALING, scalings
from tenantserve.errors import AdapterError
from tenantserve.registry.schema import Registry
from tests.lora_corpus import make_adapter, make_base


@pytest.fixture
def cache(tmp_path: Path) -> FingerprintCache:
    return FingerprintCache(tmp_path / "cache").load()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


def _admit(tmp_path: Path, base: Path, cache: FingerprintCache, name: str = "a", *,
           tensors=None, **kw: object):  # type: ignore[no-untyped-def]
    d = make_adapter(tmp_path / "adapters" / name, **kw)  # type: ignore[arg-type]
    if tensors is not None:
        weights = d / "adapter_model.safetensors"
        t = load_file(str(weights))
        tensors(t)
        save_file(t, str(weights))
    write_stamp(d, fingerprint(base).value)
    data = {"base": {"name": "tiny", "path": "base"}, "engine": {"max_loras": 2, "max_lora_rank": 8},
            "tenants": [{"id": "t", "adapters": [{"name": name, "path": f"adapters/{name}"}]}]}
    reg = Registry.parse(json.dumps(data), root=tmp_path)
    return admit(reg, reg.adapters()[0][1], max_lora_rank=8, cache=cache)


def _code(tmp_path: Path, base: Path, cache: FingerprintCache, **kw: object) -> str:
    with pytest.raises(AdapterError) as info:
        _admit(tmp_path, base, cache, **kw)
    assert "\n" not in str(info.value)
    return info.value.code


def _first(t: dict) -> str:
    return sorted(t)[0]


def test_a_normal_adapter_passes(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    assert _admit(tmp_path, base, cache).rank == 8


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path: Path, base: Path, cache: FingerprintCache, value: float) -> None:
    def poison(t: dict) -> None:
        t[_first(t)][0, 0] = value

    assert _code(tmp_path, base, cache, tensors=poison) == "weights_not_finite"


def test_one_nan_in_the_last_tensor_is_found(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    def poison(t: dict) -> None:
        t[sorted(t)[-1]][-1, -1] = np.nan

    assert _code(tmp_path, base, cache, tensors=poison) == "weights_not_finite"


def test_extreme_weights_are_refused(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    def inflate(t: dict) -> None:
        t[_first(t)][1, 1] = MAX_ABS_WEIGHT * 2

    assert _code(tmp_path, base, cache, tensors=inflate) == "weights_out_of_range"


@pytest.mark.parametrize("dtype", [np.int8, np.bool_, np.int32])
def test_non_float_weights_are_refused(tmp_path: Path, base: Path, cache: FingerprintCache, dtype: type) -> None:
    def cast(t: dict) -> None:
        t[_first(t)] = t[_first(t)].astype(dtype)

    assert _code(tmp_path, base, cache, tensors=cast) == "weights_dtype"


def test_float16_and_float64_weights_pass(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    def half(t: dict) -> None:
        for k in t:
            t[k] = t[k].astype(np.float16)

    assert _admit(tmp_path, base, cache, "half", tensors=half).rank == 8


@pytest.mark.parametrize("config", [
    {"lora_alpha": 1e308}, {"lora_alpha": -1e30}, {"lora_alpha": 0}, {"lora_alpha": 8 * MAX_SCALING * 2},
    {"lora_alpha": 1e6, "use_rslora": True}, {"alpha_pattern": {"q_proj": 1e9}},
])
def test_extreme_scalings_are_refused(tmp_path: Path, base: Path, cache: FingerprintCache, config: dict) -> None:
    assert _code(tmp_path, base, cache, config=config) == "scaling_out_of_range"


def test_scalings_follow_peft() -> None:
    assert scalings(8, 16, {}, {}, False) == {"default": 2.0}
    assert scalings(16, 32, {}, {}, True) == {"default": 8.0}
    assert scalings(8, 16, {"q_proj": 16}, {"v_proj": 4}, False) == {"default": 2.0, "q_proj": 1.0, "v_proj": 0.5}
