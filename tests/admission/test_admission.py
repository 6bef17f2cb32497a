"""Admission against a corpus of bad adapters and bases built here: each refused with its own reason code."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tenantserve.admission.adapter_dir import write_stamp
from tenantserve.admission.admit import BaseFacts, admit, verify_base
from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.report import check_registry
from tenantserve.engine.launch import plan_launch
from tenantserve.errors import AdapterError, BaseModelError, RegistryError
from tenantserve.registry.schema import AdapterSpec, Registry
from tests.lora_corpus import flip_byte, make_adapter, make_base, truncate


@pytest.fixture
def cache(tmp_path: Path) -> FingerprintCache:
    return FingerprintCache(tmp_path / "cache").load()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


def _registry(tmp_path: Path, adapters: list[dict], *, pin: str | None = None, files: dict | None = None,
              max_lora_rank: int | None = 8) -> Registry:
    data: dict = {"base": {"name": "tiny", "path": "base"}, "engine": {"max_loras": 2},
                  "tenants": [{"id": f"t{i}", "adapters": [a]} for i, a in enumerate(adapters)]}
    if max_lora_rank:
        data["engine"]["max_lora_rank"] = max_lora_rank
    if pin:
        data["base"]["fingerprint"] = pin
    if files:
        data["base"]["files"] = files
    return Registry.parse(json.dumps(data), root=tmp_path)


def _good(tmp_path: Path, base: Path, name: str = "good", **kw: object) -> dict:
    d = make_adapter(tmp_path / "adapters" / name, **kw)  # type: ignore[arg-type]
    write_stamp(d, fingerprint(base).value)
    return {"name": name, "path": f"adapters/{name}"}


def _refusal(tmp_path: Path, spec: dict, cache: FingerprintCache, **kw: object) -> AdapterError:
    reg = _registry(tmp_path, [spec])
    with pytest.raises(AdapterError) as info:
        admit(reg, reg.adapters()[0][1], max_lora_rank=8, cache=cache, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value) and f"'{spec['name']}'" in str(info.value)
    return info.value


def test_a_stamped_adapter_is_admitted_with_its_digests(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    reg = _registry(tmp_path, [_good(tmp_path, base)])
    a = admit(reg, reg.adapters()[0][1], max_lora_rank=8, cache=cache)
    weights = tmp_path / "adapters" / "good" / "adapter_model.safetensors"
    assert a.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (a.rank, a.target_modules, a.modules, a.bytes) == (8, ("q_proj", "v_proj"), 4, weights.stat().st_size)
    assert a.base_verified and a.declared_base == fingerprint(base).value and a.fingerprint.startswith("sha256:")


def test_registry_field_declares_the_base_too(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    make_adapter(tmp_path / "adapters" / "a")
    reg = _registry(tmp_path, [{"name": "a", "path": "adapters/a", "base_fingerprint": fingerprint(base).value}])
    assert admit(reg, reg.adapters()[0][1], cache=cache).base_verified


@pytest.mark.parametrize(
    ("code", "build"),
    [
        ("rank_too_high", lambda d, b: make_adapter(d, rank=16)),
        ("config_missing", lambda d, b: (make_adapter(d), (d / "adapter_config.json").unlink())),
        ("config_invalid", lambda d, b: (make_adapter(d), (d / "adapter_config.json").write_text('{"r": 8,'))),
        ("config_invalid", lambda d, b: make_adapter(d, config={"r": "eight"})),
        ("not_lora", lambda d, b: make_adapter(d, config={"peft_type": "IA3"})),
        ("unsupported_modules", lambda d, b: make_adapter(d, config={"modules_to_save": ["lm_head"]})),
        ("unsupported_modules", lambda d, b: make_adapter(d, extra_tensors={
            "base_model.model.model.embed_tokens.weight": (64, 32)})),
        ("unsupported_feature", lambda d, b: make_adapter(d, config={"use_dora": True})),
        ("no_target_match", lambda d, b: make_adapter(d, targets=("c_attn",), weight_targets=())),
        ("weights_untargeted", lambda d, b: make_adapter(d, targets=("c_attn", "c_proj"), weight_targets=("q_proj",))),
        ("shape_mismatch", lambda d, b: make_adapter(d, hidden=48)),
        ("shape_mismatch", lambda d, b: make_adapter(d, layers=4)),
        ("weights_truncated", lambda d, b: (make_adapter(d), truncate(d / "adapter_model.safetensors"))),
        ("weights_missing", lambda d, b: (make_adapter(d), (d / "adapter_model.safetensors").unlink())),
        ("weights_invalid", lambda d, b: (make_adapter(d), (d / "adapter_model.safetensors").write_bytes(
            (9).to_bytes(8, "little") + b"not json!"))),
        ("weights_invalid", lambda d, b: (make_adapter(d), (d / "adapter_model.safetensors").write_bytes(
            (2**40).to_bytes(8, "little")))),
        ("weights_invalid", lambda d, b: (make_adapter(d), (d / "adapter_model.safetensors").write_bytes(
            (2).to_bytes(8, "little") + b"[]"))),
        ("path_missing", lambda d, b: None),
        ("weights_format", lambda d, b: (make_adapter(d), (d / "adapter_model.safetensors").rename(
            d / "adapter_model.bin"))),
    ],
)
def test_bad_adapters_are_refused_with_their_own_reason(tmp_path: Path, base: Path, cache: FingerprintCache,
                                                          code: str, build) -> None:
    d = tmp_path / "adapters" / "bad"
    build(d, base)
    if (d / "adapter_config.json").exists() and code != "config_invalid":
        write_stamp(d, fingerprint(base).value)
    assert _refusal(tmp_path, {"name": "bad", "path": "adapters/bad"}, cache).code == code


def test_adapter_trained_on_another_base_is_refused(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    other = make_base(tmp_path / "other", seed=7)  # same architecture and shapes, other weights
    d = make_adapter(tmp_path / "adapters" / "foreign")
    write_stamp(d, fingerprint(other).value)
    err = _refusal(tmp_path, {"name": "foreign", "path": "adapters/foreign"}, cache)
    assert err.code == "base_mismatch"
    assert fingerprint(other).value in str(err) and fingerprint(base).value in str(err)


def test_undeclared_base_is_refused_with_how_to_stamp_unless_allowed(tmp_path: Path, base: Path,
                                                                      cache: FingerprintCache) -> None:
    make_adapter(tmp_path / "adapters" / "plain")
    err = _refusal(tmp_path, {"name": "plain", "path": "adapters/plain"}, cache)
    assert err.code == "base_undeclared" and "tenantserve stamp" in str(err)
    reg = _registry(tmp_path, [{"name": "plain", "path": "adapters/plain", "allow_unverified_base": True}])
    a = admit(reg, reg.adapters()[0][1], cache=cache)
    assert not a.base_verified and "unverified" in a.warnings[0]


def test_registry_and_stamp_disagreeing_is_a_conflict(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    spec = _good(tmp_path, base, "c")
    err = _refusal(tmp_path, {**spec, "base_fingerprint": "sha256:" + "0" * 64}, cache)
    assert err.code == "base_conflict"


def test_paths_and_names_that_escape_are_refused(tmp_path: Path, base: Path, cache: FingerprintCache) -> None:
    root = tmp_path / "adapters"
    _good(tmp_path, base, "inside")
    outside = make_adapter(tmp_path / "outside")
    write_stamp(outside, fingerprint(base).value)
    err = _refusal(tmp_path, {"name": "x", "path": "adapters/../outside"}, cache, adapters_root=root)
    assert err.code == "path_escape"
    os.symlink(outside, root / "link")
    assert _refusal(tmp_path, {"name": "x", "path": "adapters/link"}, cache, adapters_root=root).code == "path_escape"
    reg = _registry(tmp_path, [{"name": "inside", "path": "adapters/inside"}])
    assert admit(reg, reg.adapters()[0][1], cache=cache, adapters_root=root).base_verified
    with pytest.raises(AdapterError) as info:
        admit(reg, AdapterSpec.model_construct(name="../../etc", path=Path("adapters/inside")), cache=cache)
    assert info.value.code == "name_invalid"
    with pytest.raises(RegistryError, match="name"):
        _registry(tmp_path, [{"name": "../evil", "path": "adapters/inside"}])


def test_base_changed_after_pinning_names_the_file_and_both_values(tmp_path: Path, base: Path,
                                                                    cache: FingerprintCache) -> None:
    pinned = fingerprint(base)
    reg = _registry(tmp_path, [_good(tmp_path, base)], pin=pinned.value, files=pinned.manifest())
    assert verify_base(reg, cache=cache).result == "match"
    flip_byte(base / "model.safetensors")
    check = verify_base(reg, cache=cache)
    assert check.result == "mismatch" and [c.name for c in check.changes] == ["model.safetensors"]
    with pytest.raises(BaseModelError) as info:
        plan_launch(reg, device="cpu", cache=cache)
    msg = str(info.value)
    assert info.value.code == "base_changed" and "model.safetensors" in msg
    assert pinned.value in msg and check.actual in msg
    unpinned = _registry(tmp_path, [{"name": "good", "path": "adapters/good"}])
    assert verify_base(unpinned, cache=cache).result == "unpinned"


def test_base_facts_describe_the_linear_layers(tmp_path: Path, cache: FingerprintCache) -> None:
    facts = BaseFacts.read(make_base(tmp_path / "b", hidden=32, inter=48, layers=3), cache=cache)
    linear = facts.linear_modules()
    assert linear["model.layers.2.mlp.down_proj"] == (32, 48) and linear["lm_head"] == (64, 32)
    assert (facts.hidden_size, facts.num_layers, facts.vocab_size) == (32, 3, 64)
    truncate(tmp_path / "b" / "model.safetensors")
    with pytest.raises(BaseModelError) as info:
        BaseFacts.read(tmp_path / "b", cache=cache)
    assert info.value.code == "weights_truncated"


def test_check_reports_every_adapter_and_one_bad_one_affects_no_other(tmp_path: Path, base: Path,
                                                                       cache: FingerprintCache) -> None:
    specs = [_good(tmp_path, base, "one"), {"name": "high", "path": "adapters/high"}, _good(tmp_path, base, "two")]
    write_stamp(make_adapter(tmp_path / "adapters" / "high", rank=16), fingerprint(base).value)
    report = check_registry(_registry(tmp_path, specs), cache=cache)
    assert [(r.adapter, r.verdict, r.code) for r in report.rows] == [
        ("one", "ok", "ok"), ("high", "refused", "rank_too_high"), ("two", "ok", "ok")]
    assert not report.ok and report.base_result == "unpinned"
    assert check_registry(_registry(tmp_path, specs, max_lora_rank=None), cache=cache).ok  # derived rank 16
