"""The launcher loads the middleware exactly when the registry's security.auth is on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantserve.engine.launch import plan_launch
from tenantserve.middleware import MIDDLEWARE_PATH
from tenantserve.registry.schema import Registry
from tests.conftest import DEFAULT_REGISTRY, EMBEDDED
from tests.integration.engines import copy_registry

needs_model = pytest.mark.skipif(not (EMBEDDED / "base").is_dir(), reason="embedded model not built")


def _middleware_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--middleware"]


def _copy(tmp_path: Path, *, auth: bool | None = None) -> Path:
    """The demo registry, its security section as shipped unless ``auth`` says otherwise. Admission of the adapters'
    declared base is another test's business (tests/cli/test_check_cli.py): it is waived here."""
    path = copy_registry(tmp_path / "r.yaml")
    reg = Registry.load(path)
    for _, adapter in reg.adapters():
        adapter.allow_unverified_base = True
    if auth is not None:
        reg.security.auth = auth
    reg.save(path)
    return path


@needs_model
def test_default_demo_registry_runs_plain_vllm(tmp_path: Path) -> None:
    assert Registry.load(DEFAULT_REGISTRY).security.auth is False
    plan = plan_launch(Registry.load(_copy(tmp_path)), device="cpu")
    assert _middleware_args(plan.argv) == []


@needs_model
def test_auth_on_adds_the_middleware_once_and_names_the_registry(tmp_path: Path) -> None:
    path = _copy(tmp_path, auth=True)
    plan = plan_launch(Registry.load(path), device="cpu", middleware=(MIDDLEWARE_PATH,))
    assert _middleware_args(plan.argv) == [MIDDLEWARE_PATH]
    assert plan.env["TENANTSERVE_REGISTRY"] == str(path.resolve())


def test_a_registry_without_a_security_section_is_secure(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    text = DEFAULT_REGISTRY.read_text()
    assert "auth: false" in text
    path.write_text(text.replace("security:\n  auth: false\n", ""))
    assert Registry.parse(path.read_text()).security.auth is True
