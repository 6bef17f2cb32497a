"""A broken registry edit while running: the sidecar keeps the last good registry, and says so (one log line per
distinct error, a header and ``GET /admin/registry`` on the admin API, a warning above the CLI's lists), and
``/readyz`` (ready: engine reachable and verified, registry valid) is 503 naming what is wrong while ``/healthz``
(live) stays 200."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.errors import RegistryError
from tenantserve.sidecar.routes import REGISTRY_ERROR_HEADER
from tenantserve.sidecar.store import RegistryStore
from tests.sidecar.serving import TOKEN, SidecarThread
from tests.sidecar.squatter import Squatter


def _break(path: Path, key: str = "adaptrs") -> str:
    """A typo under the first tenant; returns the original text."""
    text = path.read_text()
    path.write_text(text.replace("adapters:", f"{key}:", 1))
    return text


def test_store_logs_each_distinct_error_once_and_keeps_the_last_good(registry_file: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    store = RegistryStore(registry_file)
    good = store.load()
    original = _break(registry_file)
    with caplog.at_level(logging.WARNING, logger="tenantserve.sidecar"):
        for _ in range(3):  # reconcile passes
            with pytest.raises(RegistryError):
                store.load()
        registry_file.write_text(original.replace("adapters:", "adapterz:", 1))
        for _ in range(2):
            assert store.check()[1] is not None
        registry_file.write_text(original)
        store.load()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert f"{registry_file}:" in lines[0] and "adaptrs" in lines[0] and "last good" in lines[0]
    assert "adapterz" in lines[1] and "valid again" in lines[2]
    assert store.error is None and store.last_good is not None
    assert [t.id for t in store.last_good.tenants] == [t.id for t in good.tenants]


def test_admin_lists_and_cli_show_the_registry_error(sidecar: SidecarThread) -> None:
    registry = sidecar.config.registry_path
    with sidecar.client() as c:
        assert REGISTRY_ERROR_HEADER not in c.get("/admin/adapters").headers
        assert c.get("/admin/registry").json()["valid"] is True
        _break(registry)
        tenants = c.get("/admin/tenants")
        assert tenants.status_code == 200 and [t["id"] for t in tenants.json()] == ["acme"]  # the last good one
        error = tenants.headers[REGISTRY_ERROR_HEADER]
        assert error.startswith(f"{registry}:") and "adaptrs" in error
        assert c.get("/admin/adapters").headers[REGISTRY_ERROR_HEADER] == error
        status = c.get("/admin/registry").json()
        assert status == {"path": str(registry), "valid": False, "error": error}
    env = {"TENANTSERVE_ADMIN_TOKEN": TOKEN}
    for group in ("adapters", "tenants"):
        out = CliRunner().invoke(main, [group, "list", "--url", sidecar.url], env=env)
        assert out.exit_code == 0, out.output
        assert "warning [registry_invalid]" in out.output and "adaptrs" in out.output
    assert "acme" in CliRunner().invoke(main, ["tenants", "list", "--url", sidecar.url], env=env).output


def test_readyz_names_what_is_not_ready_and_healthz_stays_live(sidecar: SidecarThread) -> None:
    """The fixture's engine URL is a closed port: engine_down; then a broken registry too."""
    with sidecar.client() as admin, sidecar.client(token=None) as anyone:
        assert anyone.get("/healthz").status_code == 200
        ready = admin.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"engine": "engine_down", "registry": "ok"}
        _break(sidecar.config.registry_path)
        ready = admin.get("/readyz").json()
        assert ready["status"] == "not_ready"
        assert ready["checks"] == {"engine": "engine_down", "registry": "registry_invalid"}
        assert any("adaptrs" in p["message"] for p in ready["problems"])
        public = anyone.get("/readyz")  # no token: the codes, not the file's lines
        assert public.status_code == 503 and "adaptrs" not in public.text
        assert {p["code"] for p in public.json()["problems"]} == {"engine_down", "registry_invalid"}
        assert anyone.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_with_an_engine_and_a_valid_registry(registry_file: Path) -> None:
    with Squatter() as engine, SidecarThread(registry_file, engine.url, reconcile=False) as sidecar:
        with sidecar.client(token=None) as anyone:
            ready = anyone.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready", "checks": {"engine": "ok", "registry": "ok"}, "problems": []}
            _break(registry_file)
            assert anyone.get("/readyz").status_code == 503


def test_readyz_with_a_token_needs_the_engine_to_prove_itself(write_registry: Callable[[dict], Path]) -> None:
    """With auth on, an answering engine that does not prove it holds the admin token is not ready."""
    path = write_registry({"version": 1, "base": {"name": "demo-base", "path": "base"},
                           "engine": {"max_loras": 2, "max_lora_rank": 8}, "tenants": [{"id": "acme"}]})
    with Squatter() as squatter, SidecarThread(path, squatter.url, reconcile=False) as sidecar:
        with sidecar.client() as admin:
            ready = admin.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["engine"] == "engine_unverified"
        assert squatter.authorizations() == []
    with Squatter(prove_with=TOKEN) as engine, SidecarThread(path, engine.url, reconcile=False) as sidecar:
        with sidecar.client() as admin:
            assert admin.get("/readyz").status_code == 200
