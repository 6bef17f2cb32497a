"""``tenantserve verify`` against real engines: the demo adapters and the base pass in mixed batches on the shared
session engine; a base perturbed in one layer (engine) fails against the true base (dedicated); with the plugin's
CPU LoRA fix switched off (``TENANTSERVE_CPU_LORA_OPS=stock``) base requests inside mixed batches fail.

The CLI runs in-process (``CliRunner``) so transformers is imported once; everything else is real: the engine, the
OpenAI API, transformers + peft.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from tenantserve.cli import main
from tenantserve.demo import embedded
from tenantserve.registry.schema import Registry
from tests.conftest import DEFAULT_REGISTRY, EMBEDDED, ROOT
from tests.integration.engines import RunningEngine, copy_registry, copy_secured_registry, start_engine

PROMPTS = ROOT / "configs" / "verify"
ADMIN_TOKEN = "tsadmin-" + "verify-test-admin-token"


def run_verify(*args: str) -> tuple[Result, dict | None]:
    result = CliRunner().invoke(main, ["verify", *args, "--json"], terminal_width=200)
    report = json.loads(result.stdout) if result.exit_code in (0, 1) else None
    return result, report


@pytest.mark.parametrize("model", ["sql", "pirate", "french", embedded.BASE_MODEL])
def test_demo_adapters_and_the_base_pass_in_mixed_batches(engine: RunningEngine, model: str) -> None:
    """The default registry and its default prompt sets (configs/verify/<model>.jsonl) against the session engine,
    which serves the same base and adapters."""
    result, report = run_verify("--adapter", model, "--registry", str(DEFAULT_REGISTRY), "--engine-url", engine.url)
    assert result.exit_code == 0, result.output
    assert report is not None and report["ok"] and len(report["prompts"]) >= 4
    for row in report["prompts"]:
        assert row["passed"] and row["diverged_at"] is None, row
        assert row["dedicated_tokens"] == row["consolidated_tokens"]
        assert row["max_logprob_diff"] < 1e-3  # float32 reordering noise, far inside the tolerance
        assert set(row["mixed_with"]) == set(row["companions"]) and len(row["companions"]) == 2, row
        assert (embedded.BASE_MODEL in row["companions"]) == (model != embedded.BASE_MODEL)
    first = report["prompts"][0]
    if model == embedded.SQL_ADAPTER:
        assert first["consolidated"].strip() == embedded.SQL_ON_SQL


def test_bad_input_is_one_line_and_exit_2(engine: RunningEngine, tmp_path: Path) -> None:
    result, _ = run_verify("--adapter", "no-such", "--registry", str(DEFAULT_REGISTRY), "--engine-url", engine.url)
    assert result.exit_code == 2 and result.stderr.startswith("tenantserve: error [adapter_unknown]: ")
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "List 3 fruits:"}\n{"prompt": "x", "max_tokens": -1}\n')
    result, _ = run_verify("--adapter", "sql", "--registry", str(DEFAULT_REGISTRY), "--engine-url", engine.url,
                           "--prompts", str(bad))
    assert result.exit_code == 2 and "[prompts_invalid]" in result.stderr and "bad.jsonl:2" in result.stderr
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "apple " * 300}) + "\n")
    result, _ = run_verify("--adapter", "sql", "--registry", str(DEFAULT_REGISTRY), "--engine-url", engine.url,
                           "--prompts", str(long))
    assert result.exit_code == 2 and "max_model_len 256" in result.stderr
    registry = copy_registry(tmp_path / "adapters.yaml")  # no verify/ beside it: no default prompt set
    result, _ = run_verify("--adapter", "sql", "--registry", str(registry), "--engine-url", engine.url)
    assert result.exit_code == 2 and str(tmp_path / "verify" / "sql.jsonl") in result.stderr


def test_unreachable_engine_is_exit_3(tmp_path: Path) -> None:
    from tenantserve.demo.run import free_port

    result, _ = run_verify("--adapter", "sql", "--registry", str(DEFAULT_REGISTRY),
                           "--engine-url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 3 and result.stderr.startswith("tenantserve: error [engine_unreachable]: ")


def _perturbed_registry(tmp: Path) -> Path:
    """The embedded base with one layer's MLP output scaled by 1.3, pin removed; adapters admitted unverified;
    tenant auth on (verify then gives the engine it starts its own admin token)."""
    import torch
    from safetensors.torch import load_file, save_file

    base = tmp / "perturbed-base"
    shutil.copytree(EMBEDDED / "base", base)
    weights = load_file(base / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    weights[name] = (weights[name] * 1.3).to(torch.float32)
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    path = copy_registry(tmp / "adapters.yaml")
    reg = Registry.load(path)
    reg.base.path, reg.base.fingerprint, reg.base.files = base, None, None
    for _, adapter in reg.adapters():
        adapter.base_fingerprint, adapter.allow_unverified_base = None, True
    reg.security.auth = True
    reg.save(path)
    return path


def test_a_base_perturbed_in_one_layer_fails_against_the_true_base(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No --engine-url: verify starts the engine from the (secured) registry itself and stops it after."""
    monkeypatch.setenv("TENANTSERVE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("TENANTSERVE_ADMIN_TOKEN", raising=False)
    registry = _perturbed_registry(tmp_path)
    result, report = run_verify("--adapter", "sql", "--registry", str(registry), "--prompts",
                                str(PROMPTS / "sql.jsonl"), "--dedicated-base", str(EMBEDDED / "base"))
    assert result.exit_code == 1, result.output
    assert report is not None and not report["ok"]
    failed = [row for row in report["prompts"] if not row["passed"]]
    assert failed and all(row["reason"] for row in failed)
    assert all(set(row["mixed_with"]) == set(row["companions"]) for row in report["prompts"])
    assert (tmp_path / "state" / "verify-engine.log").is_file()
    url = report["engine_url"].split(",")[0]
    with pytest.raises(httpx.HTTPError):  # stopped at the end
        httpx.get(f"{url}/health", timeout=2.0)


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    """A secured engine with vLLM's own CPU LoRA ops (the plugin's fix off): base rows get the last slot's delta."""
    tmp = tmp_path_factory.mktemp("leaky")
    path, _ = copy_secured_registry(tmp / "adapters.yaml")
    running = start_engine(path, tmp / "engine.log",
                           extra_env={"TENANTSERVE_ADMIN_TOKEN": ADMIN_TOKEN, "TENANTSERVE_CPU_LORA_OPS": "stock"})
    yield running
    running.stop()


def test_without_the_cpu_fix_base_requests_in_mixed_batches_fail(leaky: RunningEngine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTSERVE_ADMIN_TOKEN", ADMIN_TOKEN)
    result, report = run_verify("--adapter", embedded.BASE_MODEL, "--registry", str(leaky.registry_path),
                                "--prompts", str(PROMPTS / f"{embedded.BASE_MODEL}.jsonl"), "--engine-url", leaky.url)
    assert result.exit_code == 1, result.output
    assert report is not None and not report["ok"]
    assert all(set(row["mixed_with"]) == set(row["companions"]) for row in report["prompts"])
    assert sum(not row["passed"] for row in report["prompts"]) >= len(report["prompts"]) // 2
    # adapter rows are not affected by the leak: the same engine passes the sql tenant
    result, report = run_verify("--adapter", "sql", "--registry", str(leaky.registry_path),
                                "--prompts", str(PROMPTS / "sql.jsonl"), "--engine-url", leaky.url)
    assert result.exit_code == 0, result.output


def test_secured_engine_needs_the_admin_token(leaky: RunningEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("--adapter", "sql", "--registry", str(leaky.registry_path), "--prompts", str(PROMPTS / "sql.jsonl"),
            "--engine-url", leaky.url)
    monkeypatch.delenv("TENANTSERVE_ADMIN_TOKEN", raising=False)
    result, _ = run_verify(*args)
    assert result.exit_code == 2 and "[admin_token_missing]" in result.stderr
    monkeypatch.setenv("TENANTSERVE_ADMIN_TOKEN", "tsadmin-wrong")
    result, _ = run_verify(*args)
    assert result.exit_code == 3 and "[engine_refused]" in result.stderr


def test_lm_eval_task_scores_the_same_both_ways(engine: RunningEngine) -> None:
    """lm-evaluation-harness is optional (not a dependency): skipped where it is not installed."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")  # lm-eval[api], for local-completions
    result, report = run_verify("--adapter", "sql", "--registry", str(DEFAULT_REGISTRY), "--engine-url", engine.url,
                                "--prompts", str(PROMPTS / "sql.jsonl"),
                                "--lm-eval", str(PROMPTS / "lm-eval" / "sql-select.yaml"))
    assert result.exit_code == 0, result.output
    assert report is not None and report["lm_eval"]["ok"]
    metrics = {m["metric"]: m for m in report["lm_eval"]["metrics"]}
    assert metrics["exact_match"]["dedicated"] == metrics["exact_match"]["consolidated"] == 1.0
    lm = report["lm_eval"]
    assert lm["mixed_with"] == lm["companions"] and len(lm["companions"]) == 2  # companions ran through its requests
