"""`tenantserve check` warns about tenants no request can reach: auth on and no unrevoked API key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from tenantserve.admission.report import keyless_tenants
from tenantserve.cli import main
from tenantserve.registry.keys import issue_key
from tenantserve.registry.schema import Registry


def _registry(write_registry: Callable[[dict], Path], auth: bool) -> Path:
    return write_registry({"version": 1, "base": {"name": "demo-base", "path": "base"},
                           "tenants": [{"id": "acme"}, {"id": "globex"}, {"id": "hooli"}],
                           "security": {"auth": auth}})


def test_keyless_tenants_warned_only_with_auth_on(write_registry: Callable[[dict], Path]) -> None:
    path = _registry(write_registry, auth=True)
    registry = Registry.load(path, check_paths=False)
    issue_key(registry.tenants[0])
    issue_key(registry.tenants[2])
    registry.tenants[2].api_keys[0].revoked = True  # only a revoked key: unreachable too
    warnings = keyless_tenants(registry)
    assert len(warnings) == 2 and "'globex'" in warnings[0] and "'hooli'" in warnings[1]
    assert "`tenantserve keys create --tenant globex`" in warnings[0]
    registry.security.auth = False
    assert keyless_tenants(registry) == ()


def test_check_prints_the_warning_in_the_footer_and_json(write_registry: Callable[[dict], Path]) -> None:
    path = _registry(write_registry, auth=True)
    out = CliRunner().invoke(main, ["check", "--registry", str(path)])
    assert "warning: tenant 'acme' has no API key" in out.output and "keys create --tenant hooli" in out.output
    as_json = CliRunner().invoke(main, ["check", "--registry", str(path), "--json"])
    assert len(json.loads(as_json.output)["warnings"]) == 3
    quiet = CliRunner().invoke(main, ["check", "--registry", str(_registry(write_registry, auth=False))])
    assert "has no API key" not in quiet.output


def test_the_command_the_warning_suggests_runs(write_registry: Callable[[dict], Path]) -> None:
    """The suggested command is copied from the warning and run as is: it creates the key and the warning goes."""
    path = _registry(write_registry, auth=True)
    warning = keyless_tenants(Registry.load(path, check_paths=False))[1]
    suggested = warning.split("`")[1].split()
    assert suggested[:3] == ["tenantserve", "keys", "create"]
    out = CliRunner().invoke(main, [*suggested[1:], "--registry", str(path)])
    assert out.exit_code == 0, out.output
    assert [w for w in keyless_tenants(Registry.load(path, check_paths=False)) if "'globex'" in w] == []
