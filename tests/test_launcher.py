from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tenantserve.errors import AdapterError
from tenantserve.launcher import build_engine_env, build_serve_argv, derive_max_lora_rank, plan_launch, resolve_knobs
from tenantserve.registry import Registry


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
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert "VLLM_CPU_KVCACHE_SPACE" not in build_engine_env("cpu", {"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert "VLLM_CPU_KVCACHE_SPACE" not in build_engine_env("gpu", {})


def test_plan_reads_ranks_from_adapter_configs(tmp_path: Path, make_adapter) -> None:
    reg = _registry(tmp_path, {"max_loras": 2, "max_lora_rank": 8})
    make_adapter("sql", rank=8)
    make_adapter("pirate", rank=64)
    with pytest.raises(AdapterError, match="adapter 'pirate' has rank 64 > max_lora_rank 8"):
        plan_launch(reg, device="cpu")


def test_plan_refuses_missing_or_broken_adapter_config(tmp_path: Path, make_adapter) -> None:
    reg = _registry(tmp_path)
    make_adapter("sql")
    (tmp_path / "adapters" / "pirate").mkdir()
    with pytest.raises(AdapterError, match=r"adapter 'pirate': .*adapter_config\.json not found"):
        plan_launch(reg, device="cpu")
    (tmp_path / "adapters" / "pirate" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match=r"adapter 'pirate': .* is not valid JSON \(line 1"):
        plan_launch(reg, device="cpu")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantserve", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_launch_refuses_bad_registry_with_one_line_and_exit_2(tmp_path: Path, make_adapter) -> None:
    make_adapter("sql", rank=16)
    (tmp_path / "base").mkdir()
    (tmp_path / "adapters.yaml").write_text(
        "base: {name: b, path: base}\nengine: {max_loras: 2, max_lora_rank: 8}\n"
        "tenants: [{id: acme, adapters: [{name: sql, path: adapters/sql}]}]\n"
    )
    res = _cli("launch", "--registry", "adapters.yaml", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "tenantserve: error [rank_too_high]: adapter 'sql' has rank 16 > max_lora_rank 8: raise engine.max_lora_rank "
        "to 16 or retrain the adapter with r <= 8"
    ]
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_cli_launch_dry_run_prints_the_command(tmp_path: Path) -> None:
    from tests.lora_corpus import make_adapter as make_lora, make_base  # admission reads real base/adapter files

    make_base(tmp_path / "base")
    make_lora(tmp_path / "adapters" / "sql", rank=8)
    (tmp_path / "adapters.yaml").write_text("base: {name: b, path: base}\ntenants: [{id: a, adapters: [{name: sql, "
                                            "path: adapters/sql, allow_unverified_base: true}]}]\n")
    res = _cli("launch", "--registry", "adapters.yaml", "--dry-run", "--port", "8123", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "warning: adapter 'sql' declares no base" in res.stderr and "base at" in res.stderr  # unpinned base
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in res.stdout
    assert "serve" in res.stdout and "--enable-lora" in res.stdout and "--port 8123" in res.stdout
