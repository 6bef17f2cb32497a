from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tenantserve.engine.launch import AdaptersRefused, build_engine_env, build_serve_argv, plan_launch
from tenantserve.errors import AdapterError
from tenantserve.registry.knobs import derive_max_lora_rank, resolve_knobs
from tenantserve.registry.schema import Registry


def _registry(tmp_path: Path, engine: dict | None = None, adapters: tuple[str, ...] = ("sql", "pirate")) -> Registry:
    (tmp_path / "base").mkdir(exist_ok=True)
    data = {
        "base": {"name": "demo-base", "path": "base"},
        "engine": engine or {"max_loras": 2},
        "tenants": [{"id": "acme", "adapters": [{"name": n, "path": f"adapters/{n}"} for n in adapters]}],
    }
    return Registry.parse(json.dumps(data), root=tmp_path)


@pytest.mark.parametrize(("ranks", "want"), [([8], 8), ([4, 8], 8), ([9], 16), ([16, 2], 16), ([], 1), ([33], 64),
                                              ([300], 320), ([512], 512)])
def test_derive_max_lora_rank_picks_smallest_allowed(ranks: list[int], want: int) -> None:
    assert derive_max_lora_rank(ranks) == want


def test_derive_refuses_ranks_beyond_vllm() -> None:
    with pytest.raises(AdapterError, match="exceeds the largest max_lora_rank vLLM supports"):
        derive_max_lora_rank([600])


def test_rank_above_explicit_max_names_adapter_and_numbers(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"max_loras": 2, "max_lora_rank": 8})
    with pytest.raises(AdapterError, match=r"adapter 'pirate' has rank 16 > max_lora_rank 8: raise .* to 16") as info:
        resolve_knobs(reg, {"sql": 8, "pirate": 16})
    assert info.value.code == "rank_too_high" and info.value.exit_code == 2


def test_knobs_defaults(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"max_loras": 1})
    knobs = resolve_knobs(reg, {"sql": 8, "pirate": 16})
    assert (knobs.max_loras, knobs.max_lora_rank, knobs.max_cpu_loras, knobs.rank_derived) == (1, 16, 2, True)
    reg = _registry(tmp_path, {"max_loras": 2, "max_cpu_loras": 5, "max_lora_rank": 32})
    knobs = resolve_knobs(reg, {"sql": 8})
    assert (knobs.max_lora_rank, knobs.max_cpu_loras, knobs.rank_derived) == (32, 5, False)


def test_argv_has_lora_modules_in_json_form_with_base_name(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"max_loras": 2, "max_model_len": 256, "dtype": "float32", "extra_args": ["--seed", "1"]})
    knobs = resolve_knobs(reg, {"sql": 8, "pirate": 8})
    argv = build_serve_argv(reg, knobs, host="0.0.0.0", port=9000, device="cpu", python="py")
    assert argv[:5] == ["py", "-m", "tenantserve.engine.entry", "serve", str(tmp_path / "base")]
    i = argv.index("--lora-modules")
    modules = [json.loads(m) for m in argv[i + 1 : i + 3]]
    assert modules == [
        {"name": "sql", "path": str(tmp_path / "adapters/sql"), "base_model_name": "demo-base"},
        {"name": "pirate", "path": str(tmp_path / "adapters/pirate"), "base_model_name": "demo-base"},
    ]
    pairs = {argv[j]: argv[j + 1] for j in range(len(argv) - 1) if argv[j].startswith("--") and argv[j] != "--lora-modules"}
    assert pairs["--served-model-name"] == "demo-base"
    assert (pairs["--host"], pairs["--port"]) == ("0.0.0.0", "9000")
    assert (pairs["--max-loras"], pairs["--max-lora-rank"], pairs["--max-cpu-loras"]) == ("2", "8", "2")
    assert (pairs["--max-model-len"], pairs["--dtype"], pairs["--seed"]) == ("256", "float32", "1")
    assert "--enable-lora" in argv and "--enforce-eager" in argv
    assert argv == build_serve_argv(reg, knobs, host="0.0.0.0", port=9000, device="cpu", python="py")  # pure


def test_gpu_argv_is_not_forced_eager_and_has_no_modules_without_adapters(tmp_path: Path) -> None:
    reg = _registry(tmp_path, adapters=())
    argv = build_serve_argv(reg, resolve_knobs(reg, {}), host="h", port=1, device="gpu", python="py")
    assert "--enforce-eager" not in argv and "--lora-modules" not in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "1"


def test_engine_env_enables_runtime_loading_and_respects_operator_values() -> None:
    env = build_engine_env("cpu", {})
    secret = env.pop("TENANTSERVE_CACHE_SALT_SECRET")
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert len(bytes.fromhex(secret)) == 32 and build_engine_env("cpu", {})["TENANTSERVE_CACHE_SALT_SECRET"] != secret
    assert "TENANTSERVE_CACHE_SALT_SECRET" not in build_engine_env("gpu", {"TENANTSERVE_CACHE_SALT_SECRET": "mine"})
    assert "VLLM_CPU_KVCACHE_SPACE" not in build_engine_env("cpu", {"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert "VLLM_CPU_KVCACHE_SPACE" not in build_engine_env("gpu", {})


def _world(tmp_path: Path, engine: dict | None = None, **adapters: int) -> Registry:
    """A real (tiny) base and one real adapter per keyword (name=rank), every one waived from declaring its base."""
    from tests.lora_corpus import make_adapter as make_lora
    from tests.lora_corpus import make_base

    make_base(tmp_path / "base")
    for name, rank in adapters.items():
        make_lora(tmp_path / "adapters" / name, rank=rank)
    data = {"base": {"name": "demo-base", "path": "base"}, "engine": engine or {"max_loras": 2},
            "tenants": [{"id": "acme", "adapters": [{"name": n, "path": f"adapters/{n}", "allow_unverified_base": True}
                                                    for n in adapters]}]}
    return Registry.parse(json.dumps(data), root=tmp_path)


def _served(argv: list[str]) -> list[str]:
    if "--lora-modules" not in argv:
        return []
    i = argv.index("--lora-modules") + 1
    return [json.loads(m)["name"] for m in argv[i:] if m.startswith("{")]


def test_plan_leaves_a_too_high_rank_out_and_serves_the_rest(tmp_path: Path) -> None:
    reg = _world(tmp_path, {"max_loras": 2, "max_lora_rank": 8}, sql=8, pirate=16)
    plan = plan_launch(reg, device="cpu")
    assert [(r.adapter, r.tenant, r.code) for r in plan.refused] == [("pirate", "acme", "rank_too_high")]
    assert plan.refused[0].line().startswith("refused adapter 'pirate' (tenant acme) [rank_too_high]: ")
    assert _served(plan.argv) == ["sql"] and plan.knobs.max_lora_rank == 8
    with pytest.raises(AdaptersRefused) as info:
        plan_launch(reg, device="cpu", strict=True)
    assert info.value.code == "rank_too_high" and info.value.exit_code == 2 and "'pirate'" in str(info.value)


def test_plan_refuses_missing_broken_and_unreadable_adapters_alone(tmp_path: Path) -> None:
    reg = _world(tmp_path, None, sql=8, gone=8, broken=8, unreadable=8)
    shutil.rmtree(tmp_path / "adapters" / "gone")
    (tmp_path / "adapters" / "broken" / "adapter_config.json").write_text("{not json")
    weights = tmp_path / "adapters" / "unreadable" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # a download cut short
    plan = plan_launch(reg, device="cpu")
    assert [(r.adapter, r.code) for r in plan.refused] == [
        ("gone", "path_missing"), ("broken", "config_invalid"), ("unreadable", "weights_truncated")]
    assert _served(plan.argv) == ["sql"]
    with pytest.raises(AdaptersRefused) as info:
        plan_launch(reg, device="cpu", strict=True)
    assert info.value.code == "adapters_refused" and str(info.value).count("refused adapter") == 3


def test_derived_rank_comes_from_the_admitted_adapters_only(tmp_path: Path) -> None:
    reg = _world(tmp_path, None, sql=8, big=64)
    assert plan_launch(reg, device="cpu").knobs.max_lora_rank == 64  # both admitted: slots sized for the largest
    weights = tmp_path / "adapters" / "big" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    plan = plan_launch(reg, device="cpu")
    assert [r.code for r in plan.refused] == ["weights_truncated"]
    assert plan.knobs.max_lora_rank == 8 and plan.argv[plan.argv.index("--max-lora-rank") + 1] == "8"


def test_a_base_failing_its_pin_still_refuses_the_launch(tmp_path: Path) -> None:
    from tenantserve.admission.fingerprint import fingerprint
    from tenantserve.errors import BaseModelError
    from tests.lora_corpus import flip_byte

    reg = _world(tmp_path, None, sql=8)
    reg.base.fingerprint = fingerprint(tmp_path / "base").value
    flip_byte(tmp_path / "base" / "model.safetensors")
    with pytest.raises(BaseModelError) as info:
        plan_launch(reg, device="cpu")
    assert info.value.code == "base_changed" and info.value.exit_code == 2


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantserve", *args], cwd=cwd, capture_output=True, text=True)


def _cli_world(tmp_path: Path, registry: str, **adapters: int) -> None:
    from tests.lora_corpus import make_adapter as make_lora
    from tests.lora_corpus import make_base

    make_base(tmp_path / "base")
    for name, rank in adapters.items():
        make_lora(tmp_path / "adapters" / name, rank=rank)
    (tmp_path / "adapters.yaml").write_text(registry)


def test_cli_launch_names_each_refused_adapter_and_serves_the_rest(tmp_path: Path) -> None:
    _cli_world(tmp_path, "base: {name: b, path: base}\nengine: {max_loras: 2, max_lora_rank: 8}\n"
               "tenants: [{id: acme, adapters: [{name: sql, path: adapters/sql, allow_unverified_base: true},\n"
               "  {name: big, path: adapters/big, allow_unverified_base: true},\n"
               "  {name: gone, path: adapters/gone}]}]\n", sql=8, big=16)
    res = _cli("launch", "--registry", "adapters.yaml", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    refused = [line for line in res.stderr.splitlines() if "refused adapter" in line]
    assert refused == [
        "tenantserve: refused adapter 'big' (tenant acme) [rank_too_high]: adapter 'big' has rank 16 > max_lora_rank 8",
        f"tenantserve: refused adapter 'gone' (tenant acme) [path_missing]: adapter 'gone': path "
        f"{tmp_path / 'adapters' / 'gone'} is not a directory",
    ]
    assert '"name": "sql"' in res.stdout and '"name": "big"' not in res.stdout and "gone" not in res.stdout
    strict = _cli("launch", "--registry", "adapters.yaml", "--dry-run", "--strict", cwd=tmp_path)
    assert strict.returncode == 2 and strict.stdout == ""
    [line] = strict.stderr.strip().splitlines()
    assert line.startswith("tenantserve: error [adapters_refused]: refused adapter 'big' (tenant acme) [rank_too_high]")
    assert "refused adapter 'gone'" in line and "Traceback" not in strict.stderr


def test_cli_launch_dry_run_prints_the_command(tmp_path: Path) -> None:
    _cli_world(tmp_path, "base: {name: b, path: base}\ntenants: [{id: a, adapters: [{name: sql, "
                         "path: adapters/sql, allow_unverified_base: true}]}]\n", sql=8)
    res = _cli("launch", "--registry", "adapters.yaml", "--dry-run", "--port", "8123", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "warning: adapter 'sql' declares no base" in res.stderr and "base at" in res.stderr  # unpinned base
    assert "refused adapter" not in res.stderr
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in res.stdout
    assert "serve" in res.stdout and "--enable-lora" in res.stdout and "--port 8123" in res.stdout
