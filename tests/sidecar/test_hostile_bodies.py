"""Hostile input to the admin API: JSON nested 100,000 levels deep, NUL bytes in bodies and URL paths. Every one
gets a 4xx in the sidecar's error shape, no 500, no traceback, and changes nothing; the sidecar keeps serving."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.sidecar.serving import SidecarThread

DEPTH = 100_000


def _shape(resp: httpx.Response, statuses: tuple[int, ...]) -> str:
    assert resp.status_code in statuses, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in resp.text
    return body["error"]["code"]


@pytest.mark.parametrize("route", ["/admin/tenants", "/admin/tenants/acme/adapters"])
@pytest.mark.parametrize("body", [
    "[" * DEPTH + "]" * DEPTH,
    '{"id": ' + "[" * DEPTH + "]" * DEPTH + "}",
    '{"name": "x", "path": ' + '{"a":' * DEPTH + "1" + "}" * DEPTH + "}",
])
def test_deeply_nested_json_is_400_json_too_deep(sidecar: SidecarThread, route: str, body: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    before = sidecar.config.registry_path.read_text()
    with sidecar.client() as c:
        resp = c.post(route, content=body, headers={"content-type": "application/json"})
        assert _shape(resp, (400,)) == "json_too_deep"
        with sidecar.client(token=None) as anonymous:  # before the token is even looked at: still no 500
            assert _shape(anonymous.post(route, content=body, headers={"content-type": "application/json"}),
                          (400, 401)) in ("json_too_deep", "missing_token")
        assert c.get("/admin/tenants").status_code == 200
    assert sidecar.config.registry_path.read_text() == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]


@pytest.mark.parametrize("route, body", [
    ("/admin/tenants", {"id": "acme\x00"}),
    ("/admin/tenants", {"id": "\x00"}),
    ("/admin/tenants/acme/adapters", {"name": "sql\x00", "path": "sql"}),
    ("/admin/tenants/acme/adapters", {"name": "new", "path": "sql\x00/../../x"}),
    ("/admin/tenants/acme/adapters", {"name": "new", "path": "\x00"}),
    ("/admin/tenants/acme/adapters", {"name": "new", "path": "sql", "base_fingerprint": "sha256:\x00"}),
])
def test_nul_bytes_in_bodies_are_4xx(sidecar: SidecarThread, route: str, body: dict) -> None:
    before = sidecar.config.registry_path.read_text()
    with sidecar.client() as c:
        _shape(c.post(route, json=body), (400, 422))
    assert sidecar.config.registry_path.read_text() == before


@pytest.mark.parametrize("method, path", [
    ("POST", "/admin/tenants/ac%00me/adapters"),
    ("DELETE", "/admin/tenants/acme%00"),
    ("DELETE", "/admin/tenants/acme/adapters/sql%00"),
    ("DELETE", "/admin/tenants/acme/keys/key-%00"),
    ("GET", "/admin/tenants/%00/keys"),
    ("GET", "/%00"),
])
def test_nul_bytes_in_url_paths_are_4xx(sidecar: SidecarThread, method: str, path: str) -> None:
    before = sidecar.config.registry_path.read_text()
    with sidecar.client() as c:
        _shape(c.request(method, path, json={"name": "x", "path": "sql"} if method == "POST" else None),
               (400, 404, 422))
    assert sidecar.config.registry_path.read_text() == before

