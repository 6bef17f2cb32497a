"""Settings are read once per command, when it runs (never at import); ``--help`` shows what the environment gives;
a bad value is one line and exit 2. The sidecar's tokens come from the variables the registry's ``security`` names,
as the middleware reads them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.middleware.policy import AccessView
from tenantserve.registry.schema import Registry, SecuritySpec
from tenantserve.settings import Settings
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.errors import ConfigError


def test_importing_the_cli_reads_no_environment() -> None:
    """A bad TENANTSERVE_PORT used to be a pydantic traceback at import, for every command (even --version)."""
    env = {"TENANTSERVE_PORT": "eighty", "PATH": "/usr/bin:/bin"}
    version = subprocess.run([sys.executable, "-m", "tenantserve", "--version"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    launch = subprocess.run([sys.executable, "-m", "tenantserve", "launch", "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert launch.returncode == 2
    assert launch.stderr.strip().splitlines() == [
        "tenantserve: error [usage]: environment: TENANTSERVE_PORT='eighty': Input should be a valid integer, "
        "unable to parse string as an integer"]


@pytest.mark.parametrize(("command", "variable", "value"), [
    ("launch", "TENANTSERVE_PORT", "9123"),
    ("up", "TENANTSERVE_SIDECAR_PORT", "9124"),
    ("sidecar", "TENANTSERVE_ENGINE_URL", "http://10.0.0.7:9000"),
    ("check", "TENANTSERVE_REGISTRY", "/srv/tenants.yaml"),
    ("sidecar", "TENANTSERVE_ADAPTERS_ROOT", "/srv/adapters"),
])
def test_help_shows_the_default_the_environment_gives(command: str, variable: str, value: str) -> None:
    out = CliRunner().invoke(main, [command, "--help"], env={variable: value}, terminal_width=400)
    assert out.exit_code == 0, out.output
    assert f"(env {variable}). [default: {value}" in " ".join(out.output.split())


def test_settings_are_built_once_per_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    load = Settings.load.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Settings]) -> Settings:
        calls.append(1)
        return load(cls)

    monkeypatch.setattr(Settings, "load", classmethod(counting))
    for n in (1, 2):
        assert CliRunner().invoke(main, ["sidecar", "--help"]).exit_code == 0  # five options default from Settings
        assert len(calls) == n


def test_the_sidecar_reads_the_tokens_the_registry_names_as_the_middleware_does(
        write_registry: Callable[[dict], Path]) -> None:
    path = write_registry({"base": {"name": "b", "path": "base"}, "tenants": [{"id": "t"}],
                           "security": {"admin_token_env": "MY_ADMIN", "metrics_token_env": "MY_METRICS"}})
    registry = Registry.load(path)
    environ = {"MY_ADMIN": "a" * 32, "MY_METRICS": "m" * 32, "TENANTSERVE_ADMIN_TOKEN": "not-this-one"}
    config = SidecarConfig.resolve(Settings(), registry.security, environ)
    assert (config.admin_token, config.metrics_token) == ("a" * 32, "m" * 32)
    view = AccessView.build(registry, environ)
    assert environ[view.admin_token_env] == config.admin_token  # the same variable as the engine's middleware
    with pytest.raises(ConfigError, match="MY_ADMIN is not set") as info:
        SidecarConfig.resolve(Settings(), registry.security, {"TENANTSERVE_ADMIN_TOKEN": "t" * 32})
    assert (info.value.code, info.value.exit_code) == ("admin_token_missing", 2)
    default = SidecarConfig.resolve(Settings(), SecuritySpec(), {"TENANTSERVE_ADMIN_TOKEN": "t" * 32})
    assert default.admin_token == "t" * 32


def test_the_sidecar_command_refuses_without_the_registrys_token_variable(
        write_registry: Callable[[dict], Path]) -> None:
    path = write_registry({"base": {"name": "b", "path": "base"}, "tenants": [{"id": "t"}],
                           "security": {"admin_token_env": "MY_ADMIN"}})
    out = CliRunner().invoke(main, ["sidecar", "--registry", str(path)], env={"TENANTSERVE_ADMIN_TOKEN": "t" * 32})
    assert out.exit_code == 2
    assert out.output.strip().startswith("tenantserve: error [admin_token_missing]: MY_ADMIN is not set")
    assert out.output.strip().count("\n") == 0
