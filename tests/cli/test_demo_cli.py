"""``tenantserve demo`` on a secured registry: the admin token is the demo's key, or one line says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.demo.run import DemoError, demo_api_key
from tenantserve.registry.schema import Registry
from tests.integration.engines import copy_registry


@pytest.fixture
def secured_registry(tmp_path: Path) -> Path:
    path = copy_registry(tmp_path / "adapters.yaml")
    reg = Registry.load(path)
    reg.security.auth = True
    reg.save(path)
    return path


def test_auth_off_needs_no_key() -> None:
    from tests.conftest import DEFAULT_REGISTRY

    assert demo_api_key(Registry.load(DEFAULT_REGISTRY), {}) == "demo"


def test_auth_on_uses_the_admin_token_named_by_the_registry(secured_registry: Path) -> None:
    reg = Registry.load(secured_registry)
    assert demo_api_key(reg, {"TENANTSERVE_ADMIN_TOKEN": "s3cret"}) == "s3cret"
    reg.security.admin_token_env = "MY_ADMIN"
    assert demo_api_key(reg, {"MY_ADMIN": "other"}) == "other"
    with pytest.raises(DemoError) as info:
        demo_api_key(reg, {"TENANTSERVE_ADMIN_TOKEN": "s3cret"})
    assert "MY_ADMIN" in str(info.value) and info.value.code == "admin_token_missing"


def test_demo_without_the_token_exits_2_with_one_line(secured_registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENANTSERVE_ADMIN_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["demo", "--registry", str(secured_registry)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "[admin_token_missing]" in lines[0] and "TENANTSERVE_ADMIN_TOKEN" in lines[0]
    assert "Traceback" not in result.output
