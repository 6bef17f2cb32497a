"""The middleware as an ASGI layer in front of a stand-in app: status codes, error shapes, body handling,
the per-tenant models list, in-flight limits and metrics."""

from __future__ import annotations

import threading

import pytest

from tests.middleware.conftest import ADMIN_TOKEN, REMOTE, World, bearer, fake_vllm


def _complete(client, key: str | None, model: object = "sql", **extra: object):
    headers = bearer(key) if key else {}
    return client.post("/v1/completions", json={"model": model, "prompt": "hi", **extra}, headers=headers)


def _assert_openai_error(resp, status: int, code: object) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["code"] == code


def test_tenant_reaches_own_adapter_and_base(world: World) -> None:
    c = world.make()
    assert _complete(c, world.keys["acme"], "sql").json()["model"] == "sql"
    assert _complete(c, world.keys["acme"], "demo-base").status_code == 200
    assert _complete(c, world.keys["globex"], "pirate").status_code == 200


def test_other_tenants_adapter_answers_like_an_unknown_model(world: World) -> None:
    c = world.make()
    denied = _complete(c, world.keys["acme"], "pirate")
    unknown = _complete(c, world.keys["acme"], "no-such-model")
    _assert_openai_error(denied, 404, 404)
    _assert_openai_error(unknown, 404, 404)
    assert denied.json()["error"]["message"].replace("pirate", "X") == \
        unknown.json()["error"]["message"].replace("no-such-model", "X")
    _assert_openai_error(_complete(c, world.keys["globex"], "demo-base"), 404, 404)  # allow_base: false
    _assert_openai_error(_complete(c, world.keys["globex"], None), 404, 404)  # omitted = base


@pytest.mark.parametrize("key", [None, "", "tsk-not-a-key", "Bearer", "x" * 10_000])
def test_missing_or_wrong_key_is_401(world: World, key: str | None) -> None:
    resp = _complete(world.make(), key)
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "UnauthorizedError"


def test_malformed_authorization_headers(world: World) -> None:
    c = world.make()
    for value in ("Basic abc", world.keys["acme"], "Bearer  ", "bearer " + world.keys["acme"] + "x"):
        assert c.post("/v1/completions", json={"model": "sql"}, headers={"Authorization": value}).status_code == 401
    assert c.post("/v1/completions", json={"model": "sql"},
                  headers={"Authorization": "bearer " + world.keys["acme"]}).status_code == 200
    assert c.post("/v1/completions", json={"model": "sql"}, headers={"x-api-key": world.keys["acme"]}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/adapters", "/sleep", "/v1/load_lora_adapter/"])
def test_admin_routes_refuse_tenants_and_anonymous(world: World, path: str) -> None:
    c = world.make()
    _assert_openai_error(c.post(path, json={}, headers=bearer(world.keys["acme"])), 404, 404)  # see test_surface
    _assert_openai_error(c.post(path, json={}, headers=bearer("tsk-not-a-key")), 403, "admin_only")
    _assert_openai_error(c.post(path, json={}), 401, "missing_api_key")


def test_admin_route_with_admin_token_on_loopback_only(world: World) -> None:
    assert world.make().post("/v1/load_lora_adapter", json={}, headers=bearer(ADMIN_TOKEN)).status_code == 200
    remote = world.make(client=REMOTE).post("/adapters", json={}, headers=bearer(ADMIN_TOKEN))
    _assert_openai_error(remote, 403, "loopback_only")


def test_metrics_loopback_open_remote_needs_token(world: World) -> None:
    assert world.make().get("/metrics").status_code == 200
    remote = world.make(client=REMOTE)
    assert remote.get("/metrics").status_code == 401
    assert remote.get("/metrics", headers=bearer(world.keys["acme"])).status_code == 401
    assert remote.get("/metrics", headers=bearer("metrics-secret-token")).status_code == 200
    assert remote.get("/health").status_code == 200


def test_models_list_is_per_tenant(world: World) -> None:
    c = world.make()
    ids = lambda key: {m["id"] for m in c.get("/v1/models", headers=bearer(key)).json()["data"]}  # noqa: E731
    assert ids(world.keys["acme"]) == {"demo-base", "sql"}
    assert ids(world.keys["globex"]) == {"pirate"}
    assert ids(ADMIN_TOKEN) == {"demo-base", "sql", "pirate", "french", "loaded-at-runtime"}  # unfiltered
    assert c.get("/v1/models").status_code == 401


@pytest.mark.parametrize("body", [b"{not json", b"[1,2]", b"\xff\xfe", b""])
def test_unparseable_body_is_400(world: World, body: bytes) -> None:
    resp = world.make().post("/v1/completions", content=body, headers=bearer(world.keys["acme"]))
    _assert_openai_error(resp, 400, "invalid_json")


def test_oversized_body_is_413_declared_or_streamed(world: World) -> None:
    c = world.make()
    big = {"model": "sql", "prompt": "x" * (2 << 20)}
    _assert_openai_error(c.post("/v1/completions", json=big, headers=bearer(world.keys["acme"])), 413,
                         "body_too_large")

    def chunks():
        for _ in range(40):
            yield b" " * 65536

    resp = c.post("/v1/completions", content=chunks(), headers=bearer(world.keys["acme"]))
    _assert_openai_error(resp, 413, "body_too_large")


def test_streaming_passes_through(world: World) -> None:
    with world.make().stream("POST", "/v1/completions", json={"model": "sql", "stream": True},
                             headers=bearer(world.keys["acme"])) as resp:
        assert resp.status_code == 200
        assert "".join(resp.iter_text()).count("data:") == 4


def test_in_flight_limit_answers_429_with_retry_after(world: World) -> None:
    gate = threading.Event()
    c = world.make(app=fake_vllm(gate))  # acme: max_in_flight 2
    c.__enter__()  # one event loop for every thread's requests
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(_complete(c, world.keys["acme"]).status_code))
               for _ in range(2)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: world.metrics.get_sample_value("tenantserve_requests_in_flight", {"tenant": "acme"}) == 2)
        third = _complete(c, world.keys["acme"])
        _assert_openai_error(third, 429, "rate_limited")
        assert 1 <= int(third.headers["retry-after"]) <= 30  # computed and jittered: see test_policy
        assert world.metrics.get_sample_value("tenantserve_rate_limited_total", {"tenant": "acme"}) == 1
    finally:
        gate.set()
        for t in threads:
            t.join(5)
    assert results == [200, 200]
    c.__exit__(None, None, None)
    assert _complete(c, world.keys["acme"]).status_code == 200  # slots released


def _wait_for(cond, timeout: float = 5.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_metrics_bounded_labels(world: World) -> None:
    c = world.make()
    _complete(c, world.keys["acme"], "sql")
    _complete(c, world.keys["acme"], "pirate")
    _complete(c, None, "zzz-unbounded-name")
    get = world.metrics.get_sample_value
    assert get("tenantserve_requests_total", {"tenant": "acme", "model": "sql", "status": "200"}) == 1
    assert get("tenantserve_requests_total", {"tenant": "acme", "model": "other", "status": "404"}) == 1
    assert get("tenantserve_requests_total", {"tenant": "anonymous", "model": "other", "status": "401"}) == 1
    assert get("tenantserve_auth_failures_total", {"reason": "model_denied"}) == 1
    assert get("tenantserve_auth_failures_total", {"reason": "missing_key"}) == 1
    assert get("tenantserve_request_duration_seconds_count", {"tenant": "acme", "model": "sql"}) == 1
    assert get("tenantserve_requests_in_flight", {"tenant": "acme"}) == 0
    names = {s.labels.get("model") for m in world.metrics.collect() for s in m.samples}
    assert "zzz-unbounded-name" not in names and "pirate" not in names


def test_admin_reaches_any_model_vllm_serves(world: World) -> None:
    """The sidecar warms up an adapter it has just loaded, before the registry names it."""
    resp = _complete(world.make(), ADMIN_TOKEN, "loaded-at-runtime")
    assert resp.status_code == 200 and resp.json()["model"] == "loaded-at-runtime"
    tenants = {s.labels.get("tenant") for m in world.metrics.collect() for s in m.samples}
    assert "admin" not in tenants  # operator traffic is in no per-tenant series (see test_surface)


def test_prefix_cache_is_salted_per_tenant_whatever_the_client_sends(world: World) -> None:
    c = world.make()
    own = _complete(c, world.keys["acme"], "sql").json()
    assert own["content_length"] == str(own["body_length"])  # the rewritten body's length
    probe = _complete(c, world.keys["acme"], "sql", cache_salt=own["cache_salt"] + "x").json()
    globex = _complete(c, world.keys["globex"], "pirate", cache_salt=own["cache_salt"]).json()
    assert probe["cache_salt"] == own["cache_salt"] != globex["cache_salt"]
    assert "acme" not in own["cache_salt"] and len(own["cache_salt"]) == 64  # not guessable from the id


def test_duplicate_model_keys_reach_the_app_as_the_checked_document(world: World) -> None:
    c = world.make()
    raw = '{"model": "pirate", "prompt": "x", "model": "sql"}'
    resp = c.post("/v1/completions", content=raw, headers=bearer(world.keys["acme"]))
    assert resp.status_code == 200 and resp.json()["model"] == "sql"
    raw = '{"model": "sql", "prompt": "x", "model": "pirate"}'
    assert c.post("/v1/completions", content=raw, headers=bearer(world.keys["acme"])).status_code == 404


def test_websockets_are_refused(world: World) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect):
        with world.make().websocket_connect("/v1/realtime", headers=bearer(world.keys["acme"])) as ws:
            ws.receive_text()


def test_no_registry_fails_closed_with_503_but_health_answers(world: World) -> None:
    world.path.unlink()
    c = world.make()
    _assert_openai_error(_complete(c, world.keys["acme"]), 503, "registry_unavailable")
    _assert_openai_error(c.post("/adapters", json={}, headers=bearer(ADMIN_TOKEN)), 503, "registry_unavailable")
    assert c.get("/health").status_code == 200
