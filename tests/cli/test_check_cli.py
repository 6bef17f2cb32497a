"""The `check`, `fingerprint` and `stamp` commands, run as the user runs them (a subprocess, real files)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEFAULT_REGISTRY, EMBEDDED
from tests.lora_corpus import flip_byte, make_adapter, make_base, truncate


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantserve", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """A base, two good stamped adapters and a registry for them."""
    make_base(tmp_path / "base")
    for name in ("sql", "chat"):
        make_adapter(tmp_path / "adapters" / name)
        assert _cli("stamp", f"adapters/{name}", "--base", "base", cwd=tmp_path).returncode == 0
    registry = {"base": {"name": "tiny", "path": "base"}, "engine": {"max_loras": 2},
                "tenants": [{"id": "acme", "adapters": [{"name": "sql", "path": "adapters/sql"}]},
                            {"id": "globex", "adapters": [{"name": "chat", "path": "adapters/chat"}]}]}
    text = yaml.safe_dump(registry, sort_keys=False).replace("base:\n", "# the registry\nbase:  # our base\n", 1)
    (tmp_path / "adapters.yaml").write_text(text)
    return tmp_path


def test_fingerprint_json_and_pin_then_check_passes(world: Path) -> None:
    res = _cli("fingerprint", "base", "--json", cwd=world)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    weights = next(f for f in out["files"] if f["name"] == "model.safetensors")
    assert weights["sha256"] == hashlib.sha256((world / "base" / "model.safetensors").read_bytes()).hexdigest()
    res = _cli("fingerprint", "base", "--pin", "--registry", "adapters.yaml", cwd=world)
    assert res.returncode == 0, res.stderr
    text = (world / "adapters.yaml").read_text()
    pinned = yaml.safe_load(text)["base"]
    assert pinned["fingerprint"] == out["fingerprint"] and pinned["files"]["model.safetensors"] == weights["sha256"]
    assert "# the registry\nbase:  # our base\n" in text  # only the base section was edited
    assert _cli("fingerprint", "--pin", "--registry", "adapters.yaml", cwd=world).returncode == 0
    assert (world / "adapters.yaml").read_text() == text  # re-pinning an unchanged base changes nothing
    res = _cli("check", "--registry", "adapters.yaml", cwd=world)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "base: match" in res.stdout and "2/2 adapters admitted" in res.stdout


def test_check_refuses_each_bad_adapter_with_its_code_and_exits_1(world: Path) -> None:
    make_adapter(world / "adapters" / "big", rank=16, config={"r": 16})
    make_adapter(world / "adapters" / "cut")
    truncate(world / "adapters" / "cut" / "adapter_model.safetensors")
    for name in ("big", "cut"):
        _cli("stamp", f"adapters/{name}", "--base", "base", cwd=world)
    reg = yaml.safe_load((world / "adapters.yaml").read_text())
    reg["engine"]["max_lora_rank"] = 8
    reg["tenants"][0]["adapters"] += [{"name": "big", "path": "adapters/big"}, {"name": "cut", "path": "adapters/cut"}]
    (world / "adapters.yaml").write_text(yaml.safe_dump(reg, sort_keys=False))
    res = _cli("check", "--registry", "adapters.yaml", "--json", cwd=world)
    assert res.returncode == 1
    rows = {r["adapter"]: (r["verdict"], r["code"]) for r in json.loads(res.stdout)["adapters"]}
    assert rows == {"sql": ("ok", "ok"), "chat": ("ok", "ok"), "big": ("refused", "rank_too_high"),
                    "cut": ("refused", "weights_truncated")}
    table = _cli("check", "--registry", "adapters.yaml", cwd=world)
    assert table.returncode == 1 and "[rank_too_high]" in table.stdout and "FAILED" in table.stdout
    assert "Traceback" not in table.stderr


def test_check_and_launch_refuse_a_base_changed_after_pinning(world: Path) -> None:
    assert _cli("fingerprint", "--pin", "--registry", "adapters.yaml", cwd=world).returncode == 0
    flip_byte(world / "base" / "config.json", 3)
    res = _cli("check", "--registry", "adapters.yaml", cwd=world)
    assert res.returncode == 1 and "base: mismatch" in res.stdout and "config.json" in res.stdout
    res = _cli("launch", "--registry", "adapters.yaml", "--dry-run", cwd=world)
    assert res.returncode == 2 and res.stdout == ""
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("tenantserve: error [base_changed]: ") and "config.json (pinned " in line


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    res = _cli("fingerprint", "nowhere", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("tenantserve: error [path_missing]") and not res.stdout
    make_adapter(tmp_path / "a")
    res = _cli("stamp", "a", "--fingerprint", "md5:abc", cwd=tmp_path)
    assert res.returncode == 2 and "[stamp_invalid]" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(not (EMBEDDED / "base").is_dir(), reason="embedded model not built yet")
def test_default_registry_passes_check() -> None:
    res = _cli("check", "--registry", str(DEFAULT_REGISTRY), cwd=DEFAULT_REGISTRY.parent.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "base: match" in res.stdout and "3/3 adapters admitted" in res.stdout


def test_check_shows_a_missing_adapter_dir_as_a_refused_row_and_exits_1(world: Path) -> None:
    """Before: Registry.load refused the whole file (exit 2, no table). Now the table has the row."""
    reg = yaml.safe_load((world / "adapters.yaml").read_text())
    reg["tenants"][1]["adapters"].append({"name": "gone", "path": "adapters/gone"})
    (world / "adapters.yaml").write_text(yaml.safe_dump(reg, sort_keys=False))
    res = _cli("check", "--registry", "adapters.yaml", "--json", cwd=world)
    assert res.returncode == 1, res.stderr
    rows = {r["adapter"]: (r["tenant"], r["verdict"], r["code"]) for r in json.loads(res.stdout)["adapters"]}
    assert rows == {"sql": ("acme", "ok", "ok"), "chat": ("globex", "ok", "ok"),
                    "gone": ("globex", "refused", "path_missing")}
    table = _cli("check", "--registry", "adapters.yaml", cwd=world)
    assert table.returncode == 1 and "[path_missing]" in table.stdout and "2/3 adapters admitted" in table.stdout


def test_check_derives_the_rank_from_the_admitted_adapters_only(world: Path) -> None:
    make_adapter(world / "adapters" / "big", rank=64, config={"r": 64})
    _cli("stamp", "adapters/big", "--base", "base", cwd=world)
    truncate(world / "adapters" / "big" / "adapter_model.safetensors")
    reg = yaml.safe_load((world / "adapters.yaml").read_text())
    reg["tenants"][0]["adapters"].append({"name": "big", "path": "adapters/big"})
    (world / "adapters.yaml").write_text(yaml.safe_dump(reg, sort_keys=False))
    res = _cli("check", "--registry", "adapters.yaml", "--json", cwd=world)
    report = json.loads(res.stdout)
    assert res.returncode == 1 and report["max_lora_rank"] == 8  # not 64: the refused adapter widens no slot
    assert [r["code"] for r in report["adapters"]] == ["ok", "weights_truncated", "ok"]


def test_check_refuses_a_knob_set_twice_with_one_line_and_exit_2(world: Path) -> None:
    reg = yaml.safe_load((world / "adapters.yaml").read_text())
    reg["engine"]["extra_args"] = ["--max-loras=4"]
    (world / "adapters.yaml").write_text(yaml.safe_dump(reg, sort_keys=False))
    for args in (["check"], ["launch", "--dry-run"]):
        res = _cli(*args, "--registry", "adapters.yaml", cwd=world)
        assert res.returncode == 2 and res.stdout == ""
        [line] = res.stderr.strip().splitlines()
        assert line.startswith("tenantserve: error [registry_invalid]: ")
        assert "max_loras is set twice: engine.max_loras (2) and engine.extra_args[0] ('--max-loras=4')" in line


def test_check_with_an_unusable_base_keeps_every_row_and_a_real_rank(tmp_path: Path) -> None:
    from tenantserve.admission.report import check_registry
    from tenantserve.registry.schema import Registry

    make_adapter(tmp_path / "adapters" / "a", rank=16, config={"r": 16})
    reg = Registry.parse(json.dumps({"base": {"name": "b", "path": "nowhere"},
                                     "tenants": [{"id": "t", "adapters": [{"name": "a", "path": "adapters/a"},
                                                                          {"name": "z", "path": "adapters/z"}]}]}),
                         root=tmp_path)
    report = check_registry(reg)
    assert (report.base_result, report.base_code, report.max_lora_rank, report.ok) == (
        "unreadable", "path_missing", 16, False)
    assert [(r.adapter, r.code) for r in report.rows] == [("a", "base_unusable"), ("z", "base_unusable")]
