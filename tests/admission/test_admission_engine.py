"""Admission against the engine as configured: vLLM's own adapter-config validation (PEFTHelper against the engine's
LoRAConfig) and its ``--lora-target-modules`` filter. Admission must never accept what vLLM's loader refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenantserve.admission.admit import (
    LLAMA_PACKED,
    BaseFacts,
    EngineLora,
    _is_in_target_modules,  # noqa: PLC2701 - checked line for line against vLLM's
    admit,
    engine_keeps,
)
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.errors import AdapterError, RegistryError
from tenantserve.registry.schema import Registry
from tests.lora_corpus import make_adapter, make_base

EMBEDDED = Path(__file__).resolve().parents[2] / "models" / "embedded"


@pytest.fixture
def cache(tmp_path: Path) -> FingerprintCache:
    return FingerprintCache(tmp_path / "cache").load()


@pytest.fixture
def world(tmp_path: Path, cache: FingerprintCache) -> tuple[Path, BaseFacts]:
    base = make_base(tmp_path / "base")
    return tmp_path, BaseFacts.read(base, cache=cache)


def _admit(world: tuple[Path, BaseFacts], cache: FingerprintCache, name: str = "a", **kw: object):  # type: ignore[no-untyped-def]
    root, facts = world
    data = {"base": {"name": "tiny", "path": "base"}, "engine": {"max_loras": 2},
            "tenants": [{"id": "t", "adapters": [{"name": name, "path": f"adapters/{name}",
                                                  "base_fingerprint": facts.fingerprint.value}]}]}
    reg = Registry.parse(json.dumps(data), root=root)
    return admit(reg, reg.adapters()[0][1], base=facts, cache=cache, **kw)  # type: ignore[arg-type]


def _code(world: tuple[Path, BaseFacts], cache: FingerprintCache, **kw: object) -> AdapterError:
    with pytest.raises(AdapterError) as info:
        _admit(world, cache, **kw)
    assert "\n" not in str(info.value) and "'a'" in str(info.value)
    return info.value


def test_a_config_without_lora_alpha_is_refused_as_vllm_would(world, cache) -> None:  # type: ignore[no-untyped-def]
    d = make_adapter(world[0] / "adapters" / "a")
    cfg = json.loads((d / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    err = _code(world, cache, max_lora_rank=8)
    assert err.code == "config_invalid" and "lora_alpha" in str(err) and "vLLM" in str(err)
    with pytest.raises(ValueError, match="Missing required configuration fields"):  # the engine's own refusal
        _vllm_refusal(d, 8)


@pytest.mark.parametrize(("config", "code"), [
    ({"use_dora": True}, "unsupported_feature"),
    ({"lora_bias": True}, "unsupported_feature"),
    ({"bias": "all"}, "unsupported_feature"),
    ({"init_lora_weights": "pissa_niter_4"}, "unsupported_feature"),
    ({"init_lora_weights": "olora"}, "unsupported_feature"),
    ({"init_lora_weights": "some_future_init"}, "unsupported_feature"),  # vLLM allows a list, not a deny list
    ({"alora_invocation_tokens": [1, 2]}, "unsupported_feature"),
    ({"layer_replication": [[0, 1]]}, "unsupported_feature"),
    ({"use_qalora": True}, "unsupported_feature"),
    ({"use_bdlora": {"blocks": 2}}, "unsupported_feature"),
    ({"rank_pattern": {"no_such_module": 16}}, "rank_too_high"),  # vLLM sizes by every pattern value
    ({"lora_alpha": "sixteen"}, "config_invalid"),
    ({"lora_alpha": None}, "config_invalid"),
])
def test_every_vllm_refusal_has_its_reason(world, cache, config: dict, code: str) -> None:  # type: ignore[no-untyped-def]
    d = make_adapter(world[0] / "adapters" / "a", config=config)
    assert _code(world, cache, max_lora_rank=8).code == code
    with pytest.raises(Exception):  # noqa: B017 - the point: vLLM's loader refuses it too, in some way
        _vllm_refusal(d, 8)


@pytest.mark.parametrize("config", [{"init_lora_weights": "gaussian"}, {"use_rslora": True}, {"lora_alpha": 0.5},
                                    {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 4}}])
def test_what_vllm_accepts_is_admitted(world, cache, config: dict) -> None:  # type: ignore[no-untyped-def]
    d = make_adapter(world[0] / "adapters" / "a", config=config)
    _vllm_refusal(d, 8)  # does not raise
    assert _admit(world, cache, max_lora_rank=8).rank == 8


def test_engine_settings_vllm_refuses_are_the_registry_s_fault(world, cache) -> None:  # type: ignore[no-untyped-def]
    make_adapter(world[0] / "adapters" / "a")
    with pytest.raises(RegistryError) as info:
        _admit(world, cache, lora_config=EngineLora(max_lora_rank=7))
    assert info.value.code == "engine_lora_invalid"
    with pytest.raises(RegistryError):
        _admit(world, cache, lora_config=EngineLora(max_lora_rank=8, max_loras=4, max_cpu_loras=2))


def test_lora_config_decides_the_slot_rank(world, cache) -> None:  # type: ignore[no-untyped-def]
    make_adapter(world[0] / "adapters" / "a", rank=16)
    assert _code(world, cache, lora_config=EngineLora(max_lora_rank=8)).code == "rank_too_high"
    assert _admit(world, cache, max_lora_rank=8, lora_config=EngineLora(max_lora_rank=16, lora_dtype="bfloat16")
                  ).rank == 16


@pytest.mark.parametrize(("targets", "weights", "code", "dropped"), [
    (("down_proj",), ("q_proj", "v_proj"), "no_target_match", None),
    (("gate_proj",), ("q_proj", "down_proj"), "no_target_match", None),
    (("q_proj",), ("q_proj", "v_proj"), None, None),  # v_proj's LoRA lives in qkv_proj with q_proj's: served
    (("qkv_proj",), ("q_proj", "v_proj"), None, None),
    (("o_proj",), ("q_proj", "o_proj"), None, "q_proj"),
    (("gate_proj",), ("q_proj", "up_proj"), None, "q_proj"),  # up_proj shares gate_up_proj
    (("model.layers.0.self_attn.qkv_proj", "down_proj"), ("q_proj",), None, "q_proj (1 of 2)"),  # full names too
])
def test_the_engine_target_filter(world, cache, targets, weights, code, dropped) -> None:  # type: ignore[no-untyped-def]
    make_adapter(world[0] / "adapters" / "a", targets=weights)
    engine = EngineLora(max_lora_rank=8, target_modules=targets)
    if code:
        err = _code(world, cache, lora_config=engine)
        assert err.code == code and "--lora-target-modules" in str(err)
        return
    a = _admit(world, cache, lora_config=engine)
    drop_warnings = [w for w in a.warnings if "drops its weights" in w]
    assert drop_warnings == ([] if dropped is None else [drop_warnings[0]])
    if dropped:
        assert f"drops its weights for {dropped} " in drop_warnings[0]
    assert _admit(world, cache, lora_config=EngineLora(max_lora_rank=8)).warnings == ()  # no filter, no warning


def test_the_filter_is_vllm_s_own_line_for_line() -> None:
    """Against vLLM 0.32's ``is_in_target_modules`` and Llama's real ``packed_modules_mapping`` (imports the model
    class: slow, once)."""
    from vllm.lora.utils import is_in_target_modules
    from vllm.model_executor.models.registry import ModelRegistry

    packed = ModelRegistry._try_load_model_cls("LlamaForCausalLM").packed_modules_mapping
    assert {k: tuple(v) for k, v in packed.items()} == dict(LLAMA_PACKED)
    names = ["model.layers.0.self_attn.qkv_proj", "model.layers.3.self_attn.o_proj", "model.layers.1.mlp.gate_up_proj",
             "model.layers.1.mlp.down_proj", "lm_head", "model.embed_tokens", "model.layers.0.self_attn.q_proj"]
    target_sets = [["q_proj"], ["qkv_proj"], ["gate_proj", "o_proj"], ["gate_up_proj"], ["lm_head"], ["down_proj"],
                   ["model.layers.3.self_attn.o_proj"], ["k_proj", "up_proj"], [], ["embed_tokens"]]
    for name in names:
        for targets in target_sets:
            for mapping in (packed, {}):
                assert _is_in_target_modules(name, targets, mapping) == is_in_target_modules(name, targets, mapping), (
                    name, targets, mapping)
    assert engine_keeps("model.layers.0.self_attn.v_proj", ("q_proj",), packed)
    assert not engine_keeps("model.layers.0.self_attn.v_proj", ("o_proj",), packed)
    assert engine_keeps("model.layers.0.self_attn.v_proj", None, packed)


def test_the_embedded_peft_adapters_pass_vllm_s_validation(tmp_path: Path, cache: FingerprintCache) -> None:
    names = sorted(p.name for p in (EMBEDDED / "adapters").iterdir() if p.is_dir())
    data = {"base": {"name": "tiny", "path": str(EMBEDDED / "base")}, "engine": {"max_loras": 2},
            "tenants": [{"id": "t", "adapters": [{"name": n, "path": str(EMBEDDED / "adapters" / n),
                                                  "allow_unverified_base": True} for n in names]}]}
    reg = Registry.parse(json.dumps(data), root=tmp_path)
    facts = BaseFacts.read(EMBEDDED / "base", cache=cache)
    assert facts.max_position_embeddings == 256
    for _, spec in reg.adapters():
        a = admit(reg, spec, base=facts, cache=cache, lora_config=EngineLora(max_lora_rank=8, max_loras=2))
        assert a.modules > 0 and all("drops" not in w for w in a.warnings), a
        _vllm_refusal(reg.adapter_path(spec), 8)


def _vllm_refusal(adapter_dir: Path, max_lora_rank: int) -> None:
    """What the engine's worker runs before loading an adapter (worker_manager.py ``_load_adapter``)."""
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    PEFTHelper.from_local_dir(str(adapter_dir), 64).validate_legal(LoRAConfig(max_lora_rank=max_lora_rank))



@pytest.mark.engine
@pytest.mark.parametrize(("target", "applied"), [("q_proj", True), ("o_proj", False)])
def test_vllm_itself_applies_v_proj_under_a_q_proj_filter(tmp_path: Path, cache: FingerprintCache, target: str,
                                                          applied: bool) -> None:
    """The filter semantics admission assumes, on the real engine (offline vLLM on the embedded base, ~1-4 min):
    an adapter with only v_proj weights changes the output under ``--lora-target-modules q_proj`` (v_proj is packed
    into qkv_proj with q_proj) and not under ``o_proj``, and admission agrees (admitted / no_target_match)."""
    adapter = _v_only_adapter(tmp_path / "v", EMBEDDED / "base")
    res = subprocess.run([sys.executable, "-m", "tests.admission.test_admission_engine", str(EMBEDDED / "base"), str(adapter),
                          target], capture_output=True, text=True, timeout=1200,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, res.stderr[-3000:]
    assert json.loads(line.removeprefix("RESULT "))["changed"] is applied
    data = {"base": {"name": "tiny", "path": str(EMBEDDED / "base")}, "engine": {"max_loras": 1},
            "tenants": [{"id": "t", "adapters": [{"name": "v", "path": str(adapter), "allow_unverified_base": True}]}]}
    reg = Registry.parse(json.dumps(data), root=tmp_path)
    engine = EngineLora(max_lora_rank=8, target_modules=(target,))
    if applied:
        assert admit(reg, reg.adapters()[0][1], cache=cache, lora_config=engine).warnings[0].startswith(
            "adapter 'v' declares no base")  # no target warning: nothing is dropped
    else:
        with pytest.raises(AdapterError) as info:
            admit(reg, reg.adapters()[0][1], cache=cache, lora_config=engine)
        assert info.value.code == "no_target_match"


def _v_only_adapter(path: Path, base: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    cfg = json.loads((base / "config.json").read_text())
    hidden = cfg["hidden_size"]
    kv_out = cfg["num_key_value_heads"] * cfg.get("head_dim", hidden // cfg["num_attention_heads"])
    rng = np.random.default_rng(0)
    t = {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"base_model.model.model.layers.{i}.self_attn.v_proj"
        t[f"{p}.lora_A.weight"] = rng.standard_normal((8, hidden), np.float32)
        t[f"{p}.lora_B.weight"] = rng.standard_normal((kv_out, 8), np.float32)
    path.mkdir(parents=True)
    save_file(t, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                          "target_modules": ["v_proj"], "bias": "none"}))
    return path


def _probe(base: str, adapter: str, target: str) -> None:
    """Greedy tokens of the base and of the adapter on an offline engine with ``--lora-target-modules target``."""
    from tenantserve.engine.entry import patch_version

    patch_version()
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=base, enable_lora=True, max_loras=1, max_lora_rank=8, enforce_eager=True, max_model_len=128,
              dtype="float32", gpu_memory_utilization=0.3, seed=0, lora_target_modules=[target])
    sp = SamplingParams(temperature=0.0, max_tokens=16)
    plain = llm.generate(["Once upon a time"], sp, use_tqdm=False)[0].outputs[0].token_ids
    lora = llm.generate(["Once upon a time"], sp, lora_request=LoRARequest("v", 1, adapter),
                        use_tqdm=False)[0].outputs[0].token_ids
    print("RESULT " + json.dumps({"changed": list(plain) != list(lora)}), flush=True)


if __name__ == "__main__":
    _probe(*sys.argv[1:4])
