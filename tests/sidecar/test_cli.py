"""The operator CLI against a real sidecar: readable tables, one-line errors, exit codes (0 ok, 2 refused, 3 down)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.demo import free_port
from tests.sidecar.serving import TOKEN, SidecarThread


def _run(*args: str, token: str = TOKEN):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), env={"TENANTSERVE_ADMIN_TOKEN": token}, catch_exceptions=False)


def test_tenants_add_list_remove(sidecar: SidecarThread) -> None:
    url = ["--url", sidecar.url]
    assert _run("tenants", "add", *url, "globex", "--no-base").exit_code == 0
    listed = _run("tenants", "list", *url)
    assert listed.exit_code == 0 and "globex" in listed.output and "sql" in listed.output
    assert _run("tenants", "remove", *url, "globex").exit_code == 0
    assert "globex" not in _run("tenants", "list", *url).output


def test_adapters_list_shows_states(sidecar: SidecarThread) -> None:
    result = _run("adapters", "list", "--url", sidecar.url)
    assert result.exit_code == 0 and "state" in result.output


def test_refusals_are_one_line_with_exit_2(sidecar: SidecarThread, tmp_path: Path) -> None:
    result = _run("adapters", "add", "--url", sidecar.url, "acme", "new", "missing")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "[path_missing]" in result.output
    wrong = _run("tenants", "list", "--url", sidecar.url, token="wrong")
    assert wrong.exit_code == 2 and "[invalid_token]" in wrong.output and "Traceback" not in wrong.output
    gone = _run("tenants", "remove", "--url", sidecar.url, "nobody")
    assert gone.exit_code == 2 and "[tenant_not_found]" in gone.output


def test_unreachable_sidecar_exits_3() -> None:
    result = _run("tenants", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 3 and "[sidecar_unreachable]" in result.output


def test_sidecar_refuses_to_start_without_a_token(registry_file: Path) -> None:
    result = CliRunner().invoke(main, ["sidecar", "--registry", str(registry_file)],
                                env={"TENANTSERVE_ADMIN_TOKEN": ""})
    assert result.exit_code == 2 and "[admin_token_missing]" in result.output
