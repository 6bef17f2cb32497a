"""Unsafe defaults refused: no serving without tenant auth on an address other hosts can reach, unless the operator
says so in plain words. The rule lives in ``plan_launch``, so ``launch``, ``--dry-run``, ``up`` and the demo all get it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tenantserve.engine.launch import InsecureBind, is_loopback, plan_launch, require_safe_bind
from tenantserve.registry.schema import Registry
from tenantserve.settings import INSECURE_ENV
from tests.conftest import ROOT
from tests.lora_corpus import make_adapter, make_base

NETWORK = ["0.0.0.0", "::", "[::]", "192.168.1.5", "10.0.0.7", "fe80::1", "2001:db8::1", "example.com",
           "my-host", "localhost.example.com", "", "127.0.0.1.nip.io"]
LOOPBACK = ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "localhost.", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", NETWORK)
def test_network_addresses(host: str) -> None:
    assert not is_loopback(host)


def _registry(auth: bool) -> Registry:
    return Registry.parse(json.dumps({"base": {"name": "b", "path": "base"}, "security": {"auth": auth}}))


@pytest.mark.parametrize("host", NETWORK)
def test_no_auth_on_a_network_address_is_refused_unless_overridden(host: str) -> None:
    with pytest.raises(InsecureBind) as info:
        require_safe_bind(_registry(auth=False), host, allow_no_auth_on_network=False)
    assert info.value.exit_code == 2 and info.value.code == "insecure_bind"
    assert f"bind {host!r}" in str(info.value) and "--insecure-no-auth-on-network" in str(info.value)
    [warning] = require_safe_bind(_registry(auth=False), host, allow_no_auth_on_network=True)
    assert "open to the network" in warning
    assert require_safe_bind(_registry(auth=True), host, allow_no_auth_on_network=False) == []


@pytest.mark.parametrize("host", LOOPBACK)
def test_no_auth_on_loopback_is_fine(host: str) -> None:
    assert require_safe_bind(_registry(auth=False), host, allow_no_auth_on_network=False) == []


def test_plan_launch_applies_the_rule_before_reading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base directory does not even exist: the refusal comes first, for every caller of plan_launch."""
    reg = Registry.parse(json.dumps({"base": {"name": "b", "path": "nowhere"}, "security": {"auth": False}}),
                         root=tmp_path)
    monkeypatch.delenv(INSECURE_ENV, raising=False)
    with pytest.raises(InsecureBind):
        plan_launch(reg, host="0.0.0.0", device="cpu")
    monkeypatch.setenv(INSECURE_ENV, "0")
    with pytest.raises(InsecureBind):
        plan_launch(reg, host="::", device="cpu")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if k != INSECURE_ENV} | (env or {})
    return subprocess.run([sys.executable, "-m", "tenantserve", *args], cwd=cwd, capture_output=True, text=True,
                          env=full)


@pytest.fixture
def open_world(tmp_path: Path) -> Path:
    make_base(tmp_path / "base")
    make_adapter(tmp_path / "adapters" / "sql")
    (tmp_path / "adapters.yaml").write_text(
        "base: {name: b, path: base}\nsecurity: {auth: false}\n"
        "tenants: [{id: a, adapters: [{name: sql, path: adapters/sql, allow_unverified_base: true}]}]\n")
    return tmp_path


def test_cli_launch_refuses_no_auth_on_the_network_in_one_line(open_world: Path) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        res = _cli("launch", "--registry", "adapters.yaml", "--host", host, "--dry-run", cwd=open_world)
        assert res.returncode == 2 and res.stdout == ""
        [line] = res.stderr.strip().splitlines()
        assert line.startswith("tenantserve: error [insecure_bind]: security.auth is false in ")
        assert "load/unload and SageMaker /adapters routes are open to the network" in line
    res = _cli("launch", "--registry", "adapters.yaml", "--host", "127.0.0.1", "--dry-run", cwd=open_world)
    assert res.returncode == 0, res.stderr


def test_cli_override_by_flag_or_env_serves_with_a_warning(open_world: Path) -> None:
    flag = _cli("launch", "--registry", "adapters.yaml", "--host", "0.0.0.0", "--dry-run",
                "--insecure-no-auth-on-network", cwd=open_world)
    env = _cli("launch", "--registry", "adapters.yaml", "--host", "0.0.0.0", "--dry-run", cwd=open_world,
               env={INSECURE_ENV: "1"})
    for res in (flag, env):
        assert res.returncode == 0, res.stderr
        assert "--host 0.0.0.0" in res.stdout
        assert "tenantserve: warning: security.auth is false" in res.stderr and "given)" in res.stderr


def test_cli_up_refuses_too(open_world: Path) -> None:
    res = _cli("up", "--registry", "adapters.yaml", "--host", "0.0.0.0", cwd=open_world,
               env={"TENANTSERVE_ADMIN_TOKEN": "t" * 32, "TENANTSERVE_STATE_DIR": str(open_world / "state")})
    assert res.returncode == 2 and "[insecure_bind]" in res.stderr and "Traceback" not in res.stderr


def test_extra_args_cannot_rebind_the_engine(open_world: Path) -> None:
    text = (open_world / "adapters.yaml").read_text().replace("security:", "engine: {extra_args: [--host, 0.0.0.0]}\n"
                                                                            "security:")
    (open_world / "adapters.yaml").write_text(text)
    res = _cli("launch", "--registry", "adapters.yaml", "--dry-run", cwd=open_world)
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("tenantserve: error [registry_invalid]: engine.extra_args[0] ('--host'): --host is not "
                           "allowed")


def _dockerfile_cmd() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    [cmd] = re.findall(r"^CMD (\[.*\])$", text, re.M)
    return json.loads(cmd)


def _opt(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def test_the_docker_and_kubernetes_examples_run_with_auth_on() -> None:
    """Each example's host and registry pass the rule without the override, and the engine has an admin token."""
    cmd = _dockerfile_cmd()
    assert "--insecure-no-auth-on-network" not in cmd
    docker_text = (ROOT / "Dockerfile").read_text()
    assert INSECURE_ENV not in docker_text
    host = _opt(cmd, "--host", "127.0.0.1")
    # The registry the image expects is the operator's, mounted at run time: with a network host it needs auth on.
    if not is_loopback(host):
        assert "security.auth" in docker_text  # the comment tells operators what the mounted registry must say
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    [engine] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "engine"]
    argv = engine.get("args", cmd)
    env = {e["name"] for e in engine.get("env", [])}
    assert "TENANTSERVE_ADMIN_TOKEN" in env and INSECURE_ENV not in env
    assert "--insecure-no-auth-on-network" not in argv
    configmap = yaml.safe_load((ROOT / "deploy/kubernetes/registry-configmap.yaml").read_text())
    registry = Registry.parse(configmap["data"]["adapters.yaml"])
    assert registry.security.auth is True
    assert require_safe_bind(registry, _opt(argv, "--host", "127.0.0.1"), allow_no_auth_on_network=False) == []


def test_the_shipped_demo_registry_is_refused_on_the_network() -> None:
    """configs/adapters.yaml says auth: false (loopback demos): the Docker example's 0.0.0.0 must refuse it."""
    reg = Registry.load(ROOT / "configs" / "adapters.yaml", check_paths=False)
    assert reg.security.auth is False
    with pytest.raises(InsecureBind):
        require_safe_bind(reg, "0.0.0.0", allow_no_auth_on_network=False)
