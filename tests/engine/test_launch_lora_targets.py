"""The engine as configured, not the base alone: LoRA flags in ``engine.extra_args`` reach admission, so ``check``
and ``launch`` refuse an adapter the engine would silently serve as the base."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tenantserve.admission.report import check_registry
from tenantserve.engine.launch import plan_launch
from tenantserve.registry.knobs import resolve_knobs
from tenantserve.registry.schema import Registry
from tests.lora_corpus import make_adapter, make_base


def _world(tmp_path: Path, extra_args: list[str], **targets: tuple[str, ...]) -> Path:
    make_base(tmp_path / "base")
    for name, mods in targets.items():
        make_adapter(tmp_path / "adapters" / name, targets=mods)
    data = {"base": {"name": "b", "path": "base"}, "engine": {"max_loras": 2, "extra_args": extra_args},
            "tenants": [{"id": "acme", "adapters": [{"name": n, "path": f"adapters/{n}", "allow_unverified_base": True}
                                                    for n in targets]}]}
    path = tmp_path / "adapters.yaml"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("spelling", [["--lora-target-modules", "down_proj"], ["--lora-target-modules=down_proj"],
                                      ["--lora_target_modules", "down_proj", "o_proj"]])
def test_an_adapter_the_engine_filter_drops_entirely_is_refused(tmp_path: Path, spelling: list[str]) -> None:
    reg = Registry.load(_world(tmp_path, spelling, attn=("q_proj", "v_proj"), out=("o_proj",)))
    plan = plan_launch(reg, device="cpu")
    want = [("attn", "no_target_match")] + ([] if "o_proj" in spelling else [("out", "no_target_match")])
    assert [(r.adapter, r.code) for r in plan.refused] == want
    assert "--lora-target-modules" in plan.refused[0].message
    assert plan.argv[-len(spelling):] == spelling  # the engine runs with exactly these flags


def test_without_the_flag_the_same_adapters_pass(tmp_path: Path) -> None:
    reg = Registry.load(_world(tmp_path, [], attn=("q_proj", "v_proj")))
    assert plan_launch(reg, device="cpu").refused == ()


def test_partly_kept_adapter_is_served_with_a_warning(tmp_path: Path) -> None:
    """q_proj lives in vLLM's packed qkv_proj: kept; o_proj is dropped by the filter (served without it)."""
    reg = Registry.load(_world(tmp_path, ["--lora-target-modules", "qkv_proj"], mixed=("q_proj", "o_proj")))
    plan = plan_launch(reg, device="cpu")
    assert plan.refused == () and any("drops its weights for o_proj" in w for w in plan.warnings)
    assert '"name": "mixed"' in " ".join(plan.argv)


def test_resolved_knobs_describe_the_engine_to_admission(tmp_path: Path) -> None:
    reg = Registry.load(_world(tmp_path, ["--lora-target-modules", "down_proj", "--lora-dtype=float16",
                                          "--max-lora-rank", "16", "--max-cpu-loras=5"]))
    lora = resolve_knobs(reg, {}).lora_config()
    assert (lora.target_modules, lora.lora_dtype, lora.max_lora_rank, lora.max_loras, lora.max_cpu_loras) == (
        ("down_proj",), "float16", 16, 2, 5)


def test_check_and_launch_agree(tmp_path: Path) -> None:
    path = _world(tmp_path, ["--lora-target-modules", "down_proj"], attn=("q_proj", "v_proj"))
    report = check_registry(Registry.load(path))
    assert [(r.adapter, r.verdict, r.code) for r in report.rows] == [("attn", "refused", "no_target_match")]
    res = subprocess.run([sys.executable, "-m", "tenantserve", "check", "--registry", str(path)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 1 and "[no_target_match]" in res.stdout
    res = subprocess.run([sys.executable, "-m", "tenantserve", "launch", "--registry", str(path), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "tenantserve: refused adapter 'attn' (tenant acme) [no_target_match]: " in res.stderr
    assert "--lora-modules" not in res.stdout


@pytest.mark.parametrize(("extra_args", "want"), [(["--lora-target-modules", "down_proj"], (400, "no_target_match")),
                                                  ([], (502, None))])
def test_the_sidecar_judges_runtime_onboarding_against_the_same_engine(tmp_path: Path, extra_args: list[str],
                                                                       want: tuple[int, str | None]) -> None:
    """Runtime onboarding is refused for the same reason launch refuses it; without the flag the request passes
    admission and reaches the engine (absent here: 502)."""
    from tenantserve.admission.fingerprint import fingerprint
    from tenantserve.demo.run import free_port
    from tests.sidecar.serving import SidecarThread

    base = make_base(tmp_path / "base")
    make_adapter(tmp_path / "adapters" / "acme" / "attn", targets=("q_proj", "v_proj"))
    path = tmp_path / "adapters.yaml"
    path.write_text(json.dumps({"base": {"name": "b", "path": "base"}, "security": {"auth": False},
                                "engine": {"max_loras": 2, "max_lora_rank": 8, "extra_args": extra_args},
                                "tenants": [{"id": "acme"}]}))
    with SidecarThread(path, f"http://127.0.0.1:{free_port()}", reconcile=False) as sidecar, sidecar.client() as c:
        res = c.post("/admin/tenants/acme/adapters", json={
            "name": "attn", "path": str(tmp_path / "adapters" / "acme" / "attn"),
            "base_fingerprint": fingerprint(base).value})
    code = res.json()["error"]["code"] if res.status_code == 400 else None
    assert (res.status_code, code) == want, res.text
