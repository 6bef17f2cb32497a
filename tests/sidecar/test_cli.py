"""The operator CLI against a real sidecar: readable tables, one-line errors, exit codes (0 ok, 2 refused, 3 down)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.demo.run import free_port
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
    unknown_tenant = _run("adapters", "remove", "--url", sidecar.url, "nobody", "sql")
    assert unknown_tenant.exit_code == 2 and "[tenant_not_found]" in unknown_tenant.output


def test_add_and_remove_are_idempotent_and_say_so(sidecar: SidecarThread) -> None:
    url = ["--url", sidecar.url]
    first, again = _run("tenants", "add", *url, "hooli"), _run("tenants", "add", *url, "hooli")
    assert first.exit_code == again.exit_code == 0
    assert first.output.strip() == "tenant hooli: registered"
    assert again.output.strip() == "tenant hooli: already registered, unchanged"
    removed, gone = _run("tenants", "remove", *url, "hooli"), _run("tenants", "remove", *url, "hooli")
    assert removed.exit_code == gone.exit_code == 0
    assert removed.output.strip().endswith("tenant hooli: removed")
    assert gone.output.strip() == "tenant hooli: not registered, nothing to remove"
    no_adapter = _run("adapters", "remove", *url, "acme", "never-added")
    assert no_adapter.exit_code == 0 and "not registered, nothing to remove" in no_adapter.output


def test_client_commands_find_the_sidecar_up_started(sidecar: SidecarThread, tmp_path: Path) -> None:
    """`up` writes a state file beside the registry; with no --url the CLI uses it (a dead pid's file is ignored)."""
    import os

    from tenantserve.engine.runstate import RunState, read_state, remove_state, write_state

    registry = tmp_path / "elsewhere" / "adapters.yaml"  # the state file is found by the registry's path only
    registry.parent.mkdir()
    env = {"TENANTSERVE_REGISTRY": str(registry), "TENANTSERVE_SIDECAR_PORT": str(free_port())}
    down = CliRunner().invoke(main, ["tenants", "list"], env={**env, "TENANTSERVE_ADMIN_TOKEN": TOKEN})
    assert down.exit_code == 3 and env["TENANTSERVE_SIDECAR_PORT"] in down.output  # no state file: the default port
    write_state(registry, RunState(pid=os.getpid(), engine_url="http://127.0.0.1:1", sidecar_url=sidecar.url))
    found = CliRunner().invoke(main, ["tenants", "list"], env={**env, "TENANTSERVE_ADMIN_TOKEN": TOKEN})
    assert found.exit_code == 0 and "acme" in found.output
    helped = CliRunner().invoke(main, ["tenants", "list", "--help"], env=env)
    assert f"[default: {sidecar.url}]" in helped.output.replace("\n", "")
    assert read_state(registry, alive=lambda pid: False) is None  # a killed `up` leaves a file that is ignored
    remove_state(registry, pid=os.getpid() + 1)  # not ours: kept
    assert read_state(registry) is not None
    remove_state(registry, pid=os.getpid())
    assert read_state(registry) is None


def test_unreachable_sidecar_exits_3() -> None:
    result = _run("tenants", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 3 and "[sidecar_unreachable]" in result.output


def test_sidecar_refuses_to_start_without_a_token(registry_file: Path) -> None:
    result = CliRunner().invoke(main, ["sidecar", "--registry", str(registry_file)],
                                env={"TENANTSERVE_ADMIN_TOKEN": ""})
    assert result.exit_code == 2 and "[admin_token_missing]" in result.output
