"""``tenantserve fingerprint --json`` says whether the base is pinned, as the registry has it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.registry.schema import Registry
from tests.integration.engines import copy_registry


def _json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["fingerprint", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_pin_status_of_the_registry_base(tmp_path: Path) -> None:
    path = copy_registry(tmp_path / "adapters.yaml")  # the shipped registry: pinned
    out = _json("--registry", str(path))
    assert out["pinned"] is True and out["pin"] == "match"
    reg = Registry.load(path)
    reg.base.fingerprint, reg.base.files = None, None
    reg.save(path)
    out = _json("--registry", str(path))
    assert out["pinned"] is False and out["pin"] == "unpinned"
    reg.base.fingerprint = "sha256:" + "0" * 64
    reg.save(path)
    assert _json("--registry", str(path))["pin"] == "mismatch"
    assert _json("--pin", "--registry", str(path))["pin"] == "match"
    assert _json("--registry", str(path))["pinned"] is True


def test_a_directory_outside_any_registry_has_no_pin(tmp_path: Path) -> None:
    reg = Registry.load(copy_registry(tmp_path / "adapters.yaml"))
    out = _json(str(reg.base_path))
    assert out["pin"] is None and out["pinned"] is False
