"""The OpenAI surface as clients use it (issue 14, items 9 and 10): ``models.retrieve``, unknown and admin routes
for tenant keys, trailing slashes, the client's ``cache_salt``, non-string models, ``Retry-After``, and the admin
kept out of per-tenant metrics. Pure policy first, then the ASGI layer in front of the stand-in app (the same
claims run against real vLLM in tests/integration/security/test_surface_openai.py)."""

from __future__ import annotations

import random
import threading

import pytest

from tenantserve.middleware import errors
from tenantserve.middleware.policy import RETRY_AFTER_MAX, check_client_salt, retry_after
from tests.middleware.conftest import ADMIN_TOKEN, REMOTE, World, bearer, fake_vllm

VLLM_NOT_FOUND = {"error": {"message": "Not Found", "type": "Not Found", "param": None, "code": 404}}


def test_retry_after_is_whole_bounded_seconds_and_jittered() -> None:
    rng = random.Random(7)
    short = [retry_after(0.05, 1, rng) for _ in range(200)]
    assert all(isinstance(v, int) and 1 <= v <= 3 for v in short)  # 0.05..0.1 s + up to 2 s of jitter
    assert len(set(short)) >= 2  # clients told to wait do not all come back in the same second
    unknown = [retry_after(None, 0, rng) for _ in range(200)]  # no history yet: about 1 s, jittered
    assert 1 <= min(unknown) and max(unknown) <= 4 and len(set(unknown)) >= 2
    assert {retry_after(600.0, 1, rng) for _ in range(20)} == {RETRY_AFTER_MAX}  # bounded
    slow = [retry_after(8.0, 1, rng) for _ in range(50)]
    assert min(slow) >= 8 and max(slow) <= 18
    shared = [retry_after(8.0, 4, rng) for _ in range(50)]  # 4 running: one ends sooner
    assert max(shared) <= 6 < min(slow)
    for odd in (float("nan"), float("inf"), -3.0):
        assert 1 <= retry_after(odd, 1, rng) <= RETRY_AFTER_MAX


@pytest.mark.parametrize("salt", ["", 0, 5, True, [], ["a"], {"a": 1}, "a" * 129, "a/b", "a@b", "a\\b", "a\x00b"])
def test_a_salt_vllm_refuses_is_400(salt: object) -> None:
    with pytest.raises(errors.InvalidParameter) as exc:
        check_client_salt({"cache_salt": salt})
    assert exc.value.http_status == 400 and exc.value.to_body()["error"]["param"] == "cache_salt"


@pytest.mark.parametrize("salt", [None, "x", "a" * 128, "any salt, any text"])
def test_a_salt_vllm_accepts_passes(salt: object) -> None:
    check_client_salt({"cache_salt": salt})
    check_client_salt({})


def test_retrieve_own_model_card_has_openai_fields_only(world: World) -> None:
    c = world.make()
    for key, model in ((world.keys["acme"], "sql"), (world.keys["acme"], "demo-base"), (world.keys["globex"], "pirate")):
        resp = c.get(f"/v1/models/{model}", headers=bearer(key))
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"id": model, "object": "model", "created": 1, "owned_by": "vllm"}


def test_retrieve_anyone_elses_model_is_the_unknown_model_404(world: World) -> None:
    c = world.make()
    acme = bearer(world.keys["acme"])
    unknown = c.get("/v1/models/no-such-model", headers=acme)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == 404
    for model in ("pirate", "french", "loaded-at-runtime"):  # another tenant's, or served but in no registry
        resp = c.get(f"/v1/models/{model}", headers=acme)
        assert resp.status_code == 404
        assert resp.content.replace(model.encode(), b"X") == unknown.content.replace(b"no-such-model", b"X")
    globex_base = c.get("/v1/models/demo-base", headers=bearer(world.keys["globex"]))  # allow_base: false
    assert globex_base.status_code == 404
    assert c.get("/v1/models/sql").status_code == 401
    assert c.get("/v1/models/sql", headers=bearer("tsk-wrong")).status_code == 401


def test_admin_retrieves_vllms_whole_card(world: World) -> None:
    resp = world.make().get("/v1/models/loaded-at-runtime", headers=bearer(ADMIN_TOKEN))
    assert resp.status_code == 200 and resp.json()["root"] == "/srv/models/loaded-at-runtime"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/load_lora_adapter"), ("POST", "/adapters"), ("POST", "/sleep"), ("GET", "/no/such/route"),
    ("GET", "/v1/completions"), ("DELETE", "/v1/models/sql"), ("POST", "/v1/models"), ("OPTIONS", "/v1/completions"),
])
def test_tenant_key_on_a_non_tenant_route_is_vllms_not_found(world: World, method: str, path: str) -> None:
    for client in (world.make(), world.make(client=REMOTE)):  # loopback or not: the same 404
        resp = client.request(method, path, headers=bearer(world.keys["acme"]))
        assert resp.status_code == 404 and resp.json() == VLLM_NOT_FOUND, resp.text
    assert world.metrics.get_sample_value("tenantserve_auth_failures_total", {"reason": "no_route"}) == 1


def test_admin_rules_unchanged_for_admin_and_anonymous_callers(world: World) -> None:
    assert world.make().post("/v1/load_lora_adapter", json={}, headers=bearer(ADMIN_TOKEN)).status_code == 200
    remote = world.make(client=REMOTE)
    assert remote.post("/adapters", json={}, headers=bearer(ADMIN_TOKEN)).json()["error"]["code"] == "loopback_only"
    assert remote.post("/adapters", json={}).json()["error"]["code"] == "loopback_only"
    assert world.make().post("/adapters", json={}).status_code == 401
    assert world.make(env={}).post("/adapters", headers=bearer(world.keys["acme"])).status_code == 404  # no admin


def test_trailing_slash_redirects_like_vllm_and_the_acl_applies_after(world: World) -> None:
    c = world.make()
    acme = bearer(world.keys["acme"])
    moved = c.post("/v1/completions/?x=1", json={"model": "sql"}, headers=acme, follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["location"] == "/v1/completions?x=1"
    assert c.get("/v1/models//", headers=acme, follow_redirects=False).headers["location"] == "/v1/models"
    followed = c.post("/v1/completions/", json={"model": "sql", "prompt": "x"}, headers=acme)
    assert followed.status_code == 200 and followed.json()["model"] == "sql"
    assert len(followed.json()["cache_salt"]) == 64  # salted like any tenant request
    crossed = c.post("/v1/completions/", json={"model": "pirate", "prompt": "x"}, headers=acme)
    assert crossed.status_code == 404 and crossed.json()["error"]["param"] == "model"
    assert c.post("/v1/completions/", json={"model": "sql"}).status_code == 401  # no key: no redirect either
    assert c.get("/v1/completions/", headers=acme).status_code == 404  # not a tenant route for GET


@pytest.mark.parametrize("salt", ["", 7, None])
def test_tenant_salt_is_checked_like_vllm_then_replaced(world: World, salt: object) -> None:
    resp = world.make().post("/v1/completions", json={"model": "sql", "prompt": "x", "cache_salt": salt},
                             headers=bearer(world.keys["acme"]))
    if salt is None:  # vLLM accepts null: the tenant's salt replaces it
        assert resp.status_code == 200 and len(resp.json()["cache_salt"]) == 64
    else:
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "cache_salt", resp.text


@pytest.mark.parametrize("model", [123, 1.5, True, ["sql"], {"id": "sql"}])
def test_non_string_model_is_400_like_vllm(world: World, model: object) -> None:
    for key in (world.keys["acme"], ADMIN_TOKEN):
        resp = world.make().post("/v1/completions", json={"model": model, "prompt": "x"}, headers=bearer(key))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["type"] == "BadRequestError" and resp.json()["error"]["param"] == "model"


def test_429s_carry_computed_retry_after_values(world: World) -> None:
    gate = threading.Event()
    c = world.make(app=fake_vllm(gate))  # acme: max_in_flight 2
    c.__enter__()
    threads = [threading.Thread(target=lambda: c.post("/v1/completions", json={"model": "sql"},
                                                      headers=bearer(world.keys["acme"]))) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = threading.Event()
        for _ in range(600):
            if world.metrics.get_sample_value("tenantserve_requests_in_flight", {"tenant": "acme"}) == 2:
                break
            deadline.wait(0.05)
        waits = []
        for _ in range(30):
            resp = c.post("/v1/completions", json={"model": "sql"}, headers=bearer(world.keys["acme"]))
            assert resp.status_code == 429
            waits.append(int(resp.headers["retry-after"]))
    finally:
        gate.set()
        for t in threads:
            t.join(5)
        c.__exit__(None, None, None)
    assert all(1 <= w <= RETRY_AFTER_MAX for w in waits) and len(set(waits)) >= 2, waits


def test_admin_traffic_is_in_no_per_tenant_series(world: World) -> None:
    c = world.make()
    admin = bearer(ADMIN_TOKEN)
    assert c.get("/v1/models", headers=admin).status_code == 200  # the sidecar's polling
    assert c.get("/v1/models/sql", headers=admin).status_code == 200
    assert c.post("/v1/completions", json={"model": "loaded-at-runtime"}, headers=admin).status_code == 200
    assert c.post("/v1/completions", json={"model": 5}, headers=admin).status_code == 400
    assert c.post("/v1/completions", json={"model": "sql"}, headers=bearer(world.keys["acme"])).status_code == 200
    tenants = {s.labels["tenant"] for m in world.metrics.collect() for s in m.samples if "tenant" in s.labels}
    assert tenants == {"acme"}
