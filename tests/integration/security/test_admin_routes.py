"""Every route that changes the engine needs the admin token, from loopback; /metrics is open only on loopback."""

from __future__ import annotations

import pytest

from tests.integration.security.conftest import ADMIN_TOKEN, BROWSER_ORIGIN, METRICS_TOKEN, SecuredEngine

#: (method, path, body): load/unload, the unauthenticated SageMaker routes, and vLLM's other mutating routes.
MUTATING = [
    ("POST", "/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": "/tmp"}),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "sql"}),
    ("POST", "/adapters", {"name": "evil", "src": "/tmp"}),
    ("DELETE", "/adapters/sql", None),
    ("POST", "/sleep", None),
    ("POST", "/wake_up", None),
    ("POST", "/reset_prefix_cache", None),
    ("POST", "/collective_rpc", {"method": "get_model"}),
    ("POST", "/start_profile", None),
    ("POST", "/pause", None),
    ("POST", "/update_weights", {}),
    ("POST", "/scale_elastic_ep", {}),
    ("POST", "/invocations", {"model": "sql", "prompt": "x"}),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATING, ids=[f"{m} {p}" for m, p, _ in MUTATING])
def test_mutating_routes_refuse_tenant_keys_and_anonymous(secured: SecuredEngine, method: str, path: str,
                                                         body: dict | None) -> None:
    for key, status in ((secured.keys["acme"], 404), (None, 401), ("tsk-wrong", 403)):  # 404: test_surface_openai
        with secured.client(key) as c:
            resp = c.request(method, path, json=body)
        assert resp.status_code == status, (key, resp.text)
        assert set(resp.json()["error"]) >= {"message", "type", "code"}


def test_adapters_survive_every_refused_attempt(secured: SecuredEngine) -> None:
    with secured.client(ADMIN_TOKEN) as c:
        ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
    assert {"sql", "pirate", "french"} <= ids and "evil" not in ids


def test_admin_token_on_loopback_reaches_vllm(secured: SecuredEngine) -> None:
    with secured.client(ADMIN_TOKEN) as c:
        missing = c.post("/v1/load_lora_adapter", json={"lora_name": "ghost", "lora_path": "/nonexistent/ghost"})
        assert missing.status_code not in (401, 403) and missing.status_code >= 400  # vLLM's own answer
        unknown = c.post("/v1/unload_lora_adapter", json={"lora_name": "never-loaded"})
        assert unknown.status_code not in (401, 403)


def test_admin_token_off_loopback_is_refused(secured: SecuredEngine) -> None:
    with secured.client(ADMIN_TOKEN, remote=True) as c:
        for method, path, body in MUTATING[:4]:
            resp = c.request(method, path, json=body)
            assert resp.status_code == 403 and resp.json()["error"]["code"] == "loopback_only"


def test_tenants_work_off_loopback(secured: SecuredEngine) -> None:
    with secured.client(secured.keys["acme"], remote=True) as c:
        assert c.post("/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_metrics_open_on_loopback_token_elsewhere(secured: SecuredEngine) -> None:
    with secured.client(None) as c:
        assert c.get("/metrics").status_code == 200
    for key, status in ((None, 401), (secured.keys["acme"], 401), (METRICS_TOKEN, 200)):
        with secured.client(key, remote=True) as c:
            assert c.get("/metrics").status_code == status


def test_health_stays_open(secured: SecuredEngine) -> None:
    with secured.client(None) as c:
        assert c.get("/health").status_code == 200


def test_cors_preflight_is_answered_without_a_key_and_changes_nothing(secured: SecuredEngine) -> None:
    """Browsers send preflights without credentials: vLLM's CORSMiddleware (inside ours) answers them and no route
    runs, so a browser client can then send its real request with its key. A bare OPTIONS is still an admin route,
    and an origin the operator did not allow (``--allowed-origins``) is refused by vLLM."""
    preflight = {"Origin": BROWSER_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    with secured.client(None, remote=True) as c:
        for path in ("/v1/completions", "/v1/load_lora_adapter"):
            resp = c.options(path, headers=preflight)
            assert resp.status_code == 200, resp.text
            assert resp.headers["access-control-allow-origin"] == BROWSER_ORIGIN
            assert resp.content == b"OK"  # Starlette's preflight answer, not a route's
        assert c.options("/v1/completions", headers={**preflight, "Origin": "https://evil.example"}).status_code == 400
        for headers in ({}, {"Origin": BROWSER_ORIGIN}):  # not a preflight: an admin route, refused remotely
            refused = c.options("/v1/completions", headers=headers)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "loopback_only", refused.text
    with secured.client(secured.keys["acme"], remote=True) as c:
        real = c.post("/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 1},
                      headers={"Origin": BROWSER_ORIGIN})
    assert real.status_code == 200 and real.headers["access-control-allow-origin"] == BROWSER_ORIGIN
    test_adapters_survive_every_refused_attempt(secured)
