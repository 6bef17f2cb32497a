"""The sidecar's /docs, /openapi.json and /metrics follow the engine's policy: loopback, or a token.

Remote clients are simulated as in tests/integration/security: ``X-Forwarded-For`` from a documentation address
(RFC 5737), which uvicorn honours from a loopback peer (``proxy_headers``), so no packet leaves loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tenantserve.demo.run import free_port
from tests.sidecar.serving import TOKEN, SidecarThread

REMOTE = {"X-Forwarded-For": "198.51.100.7"}
METRICS_TOKEN = "sidecar-metrics-token"
GUARDED = ("/docs", "/redoc", "/openapi.json", "/metrics")


@pytest.fixture
def sidecar(registry_file: Path) -> Iterator[SidecarThread]:
    with SidecarThread(registry_file, f"http://127.0.0.1:{free_port()}", reconcile=False,
                       metrics_token=METRICS_TOKEN) as running:
        yield running


def _get(sidecar: SidecarThread, path: str, token: str | None = None, remote: bool = True) -> httpx.Response:
    headers = dict(REMOTE) if remote else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{sidecar.url}{path}", headers=headers, timeout=30)


def _refused(resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == code and "tenantserve_" not in resp.text and "/admin" not in resp.text


def test_loopback_clients_read_docs_and_metrics_without_a_token(sidecar: SidecarThread) -> None:
    for path in GUARDED:
        assert _get(sidecar, path, remote=False).status_code == 200, path
    assert "tenantserve_reconcile_runs_total" in _get(sidecar, "/metrics", remote=False).text


def test_remote_clients_need_a_token(sidecar: SidecarThread) -> None:
    for path in GUARDED:
        _refused(_get(sidecar, path), "missing_token")
        _refused(_get(sidecar, path, token="wrong"), "invalid_token")
        assert _get(sidecar, path, token=TOKEN).status_code == 200, path  # the admin token opens everything
    assert "/admin/tenants" in _get(sidecar, "/openapi.json", token=TOKEN).json()["paths"]
    assert "tenantserve_adapters" in _get(sidecar, "/metrics", token=METRICS_TOKEN).text
    for path in ("/docs", "/openapi.json"):  # the metrics token is for metrics only
        _refused(_get(sidecar, path, token=METRICS_TOKEN), "invalid_token")
    assert _get(sidecar, "/healthz").status_code == 200  # probes stay open
    assert _get(sidecar, "/admin/tenants").status_code == 401  # the admin API as before


def test_remote_metrics_without_a_metrics_token_configured_need_the_admin_token(registry_file: Path) -> None:
    with SidecarThread(registry_file, f"http://127.0.0.1:{free_port()}", reconcile=False) as sidecar:
        _refused(_get(sidecar, "/metrics", token=METRICS_TOKEN), "invalid_token")
        assert _get(sidecar, "/metrics", token=TOKEN).status_code == 200
