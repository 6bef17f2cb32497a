"""A config must describe its weights: rank per module (with rank_pattern, PEFT's key rule), lora_A/lora_B agreement,
targeted modules and layers. Checked before rank_too_high, so the reason names the real fault."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tenantserve.admission.adapter_dir import AdapterConfig
from tenantserve.admission.admit import BaseFacts, EngineLora, admit
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.errors import AdapterError
from tenantserve.registry.schema import Registry
from tests.lora_corpus import make_adapter, make_base

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def cache(tmp_path: Path) -> FingerprintCache:
    return FingerprintCache(tmp_path / "cache").load()


@pytest.fixture
def world(tmp_path: Path, cache: FingerprintCache) -> tuple[Path, BaseFacts]:
    return tmp_path, BaseFacts.read(make_base(tmp_path / "base"), cache=cache)


def _admit(world, cache, **kw):  # type: ignore[no-untyped-def]
    root, facts = world
    data = {"base": {"name": "tiny", "path": "base"}, "engine": {"max_loras": 2},
            "tenants": [{"id": "t", "adapters": [{"name": "a", "path": "adapters/a",
                                                  "base_fingerprint": facts.fingerprint.value}]}]}
    reg = Registry.parse(json.dumps(data), root=root)
    return admit(reg, reg.adapters()[0][1], base=facts, cache=cache, **kw)


def _refused(world, cache, **kw) -> AdapterError:  # type: ignore[no-untyped-def]
    with pytest.raises(AdapterError) as info:
        _admit(world, cache, **kw)
    assert "\n" not in str(info.value) and "'a'" in str(info.value)
    return info.value


@pytest.mark.parametrize("max_lora_rank", [None, 8, 16])
def test_a_config_rank_that_lies_is_a_shape_mismatch_naming_module_and_both_ranks(world, cache, max_lora_rank) -> None:  # type: ignore[no-untyped-def]
    make_adapter(world[0] / "adapters" / "a", rank=8, module_ranks={"q_proj": 16})
    err = _refused(world, cache, max_lora_rank=max_lora_rank)
    assert err.code == "shape_mismatch", err  # not rank_too_high, even with a slot rank of 8
    assert Q0 in str(err) and "rank 16" in str(err) and "rank 8" in str(err)


def test_rank_pattern_follows_peft_s_key_rule(world, cache) -> None:  # type: ignore[no-untyped-def]
    d = world[0] / "adapters" / "a"
    make_adapter(d, rank=8, module_ranks={"q_proj": 16}, config={"rank_pattern": {"q_proj": 16}})
    a = _admit(world, cache, max_lora_rank=16)
    assert a.rank == 16 == AdapterConfig.read(d).max_rank
    assert _refused(world, cache, max_lora_rank=8).code == "rank_too_high"
    # a key names a "."-suffix: layer 0 only; layer 1's q_proj keeps r=8
    make_adapter(d, rank=8, module_ranks={Q0: 16}, config={"rank_pattern": {"layers.0.self_attn.q_proj": 16}})
    assert _admit(world, cache, max_lora_rank=16).rank == 16
    make_adapter(d, rank=8, module_ranks={"q_proj": 16}, config={"rank_pattern": {"layers.0.self_attn.q_proj": 16}})
    err = _refused(world, cache, max_lora_rank=16)
    assert err.code == "shape_mismatch" and "model.layers.1.self_attn.q_proj" in str(err) and "r=8" in str(err)
    # the first matching key wins, as in PEFT's get_pattern_key and vLLM's _match_pattern
    make_adapter(d, rank=8, module_ranks={"q_proj": 4}, config={"rank_pattern": {"q_proj": 4, "self_attn.q_proj": 16}})
    assert _admit(world, cache, max_lora_rank=16).rank == 16  # the slot holds every pattern value (vLLM's rule)
    # "proj" is not a "."-suffix of q_proj: no match, r applies
    make_adapter(d, rank=8, config={"rank_pattern": {"proj": 16}})
    assert _admit(world, cache, max_lora_rank=16).rank == 16


def test_lora_a_and_b_must_agree(world, cache) -> None:  # type: ignore[no-untyped-def]
    make_adapter(world[0] / "adapters" / "a", weight_targets=("v_proj",), targets=("q_proj", "v_proj"), extra_tensors={
        f"base_model.model.{Q0}.lora_A.weight": (8, 32), f"base_model.model.{Q0}.lora_B.weight": (32, 4)})
    err = _refused(world, cache, max_lora_rank=8)
    assert err.code == "shape_mismatch" and "lora_A rank 8 != lora_B rank 4" in str(err)
    make_adapter(world[0] / "adapters" / "a", weight_targets=("v_proj",), targets=("q_proj", "v_proj"), extra_tensors={
        f"base_model.model.{Q0}.lora_A.weight": (8, 32)})
    assert _refused(world, cache, max_lora_rank=8).code == "shape_mismatch"


@pytest.mark.parametrize(("config", "weights", "verdict"), [
    ({"target_modules": ["q_proj"]}, ("q_proj", "v_proj"), "weights_untargeted"),
    ({"target_modules": ["q_proj", "v_proj", "k_proj"]}, ("q_proj", "v_proj"), "ok"),  # PEFT loads: k_proj as base
    ({"target_modules": r".*\.(q_proj|v_proj)"}, ("q_proj", "v_proj"), "ok"),
    ({"target_modules": r".*\.q_proj"}, ("q_proj", "v_proj"), "weights_untargeted"),
    ({"target_modules": "all-linear"}, ("q_proj", "v_proj", "down_proj"), "ok"),
    ({"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0]}, ("q_proj", "v_proj"), "weights_untargeted"),
    ({"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0, 1]}, ("q_proj", "v_proj"), "ok"),
    ({"target_modules": ["q_proj", "v_proj"], "exclude_modules": ["v_proj"]}, ("q_proj", "v_proj"),
     "weights_untargeted"),
    ({"target_modules": ["q_proj", "down_proj"]}, ("q_proj", "down_proj"), "ok"),
])
def test_weights_only_for_modules_the_config_targets(world, cache, config, weights, verdict) -> None:  # type: ignore[no-untyped-def]
    make_adapter(world[0] / "adapters" / "a", targets=weights, config=config)
    if verdict == "ok":
        assert _admit(world, cache, max_lora_rank=8).modules == 2 * len(weights)
    else:
        err = _refused(world, cache, max_lora_rank=8)
        assert err.code == verdict and "does not target" in str(err)


def test_a_pathological_target_regex_is_refused_in_bounded_time(world, cache) -> None:  # type: ignore[no-untyped-def]
    """PEFT would hang on this pattern for hours (Python's re holds the GIL: the whole sidecar would)."""
    make_adapter(world[0] / "adapters" / "a", config={"target_modules": r"(.*)(.*)(.*)(.*)(.*)(.*)(.*)(.*)\8\7\6\5\4\3\2\1"})
    start = time.monotonic()
    err = _refused(world, cache, max_lora_rank=8)
    assert err.code == "config_invalid" and "takes too long" in str(err)
    assert time.monotonic() - start < 60  # the budget is 2 s; the regex engine checks it coarsely on a busy machine


@pytest.mark.parametrize("segment", ["default", "sql"])
def test_weights_saved_from_a_state_dict_name_the_cause_and_the_fix(world, cache, segment) -> None:  # type: ignore[no-untyped-def]
    make_adapter(world[0] / "adapters" / "a", adapter_segment=segment)
    err = _refused(world, cache, max_lora_rank=8)
    assert err.code == "weights_state_dict"
    assert f"'{segment}'" in str(err) and f"lora_A.{segment}.weight" in str(err)
    assert "state_dict()" in str(err) and "save_pretrained" in str(err) and "modules_to_save" not in str(err)


def test_peft_itself_refuses_what_admission_calls_a_shape_mismatch(tmp_path: Path, cache) -> None:  # type: ignore[no-untyped-def]
    """The oracle: PEFT 0.21 loading the same files onto the same base (transformers Llama, CPU)."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = make_base(tmp_path / "base", shards=1)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base))
    facts = BaseFacts.read(base, cache=cache)
    cases = {
        "lies": dict(rank=8, module_ranks={"q_proj": 16}),
        "pattern": dict(rank=8, module_ranks={"q_proj": 16}, config={"rank_pattern": {"q_proj": 16}}),
        "ab": dict(weight_targets=("v_proj",), extra_tensors={f"base_model.model.{Q0}.lora_A.weight": (8, 32),
                                                              f"base_model.model.{Q0}.lora_B.weight": (32, 4)}),
    }
    for name, kw in cases.items():
        d = make_adapter(tmp_path / "adapters" / "a", **kw)  # type: ignore[arg-type]
        try:
            peft.PeftModel.from_pretrained(model, str(d))
            peft_refuses = False
        except (RuntimeError, ValueError):
            peft_refuses = True
        model = transformers.AutoModelForCausalLM.from_pretrained(str(base))  # PEFT wraps the model in place
        try:
            _admit((tmp_path, facts), cache, lora_config=EngineLora(max_lora_rank=16))
            refused = False
        except AdapterError as exc:
            assert exc.code == "shape_mismatch", exc
            refused = True
        assert refused == peft_refuses, name
