"""Issue 9 on the middleware's side, against the stand-in app: the admin marker, sequences, JSON depth, model cards,
vLLM's own 404s, the identity challenge and the cache salt. The same claims run on the real engine in
tests/integration/security/test_iso_*.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.testclient import TestClient

from tenantserve.engine import identity
from tenantserve.middleware import TenantMiddleware
from tenantserve.middleware.asgi import SALT_SECRET_ENV, salted_paths
from tenantserve.middleware.errors import InvalidParameter, TooManySequences
from tenantserve.middleware.policy import ADMIN, AccessView, requested_sequences
from tests.middleware.conftest import ADMIN_TOKEN, ENV, World, bearer, fake_vllm


def _complete(client, key: str, model: object = "sql", **extra: object):
    return client.post("/v1/completions", json={"model": model, "prompt": "hi", **extra}, headers=bearer(key))


# -- the admin caller is no string ------------------------------------------------------------------------------

def test_a_tenant_named_admin_is_just_a_tenant() -> None:
    """The registry refuses the id; even a view that had one would give it only its own models and limits."""
    digest = hashlib.sha256(b"tsk-k").digest()
    view = AccessView(base="b", models={"admin": frozenset({"mine"})}, limits={"admin": 1}, keys={digest: "admin"},
                      all_models=frozenset({"b", "mine", "theirs"}), sequence_caps={"admin": 1})
    caller = view.tenant_for("tsk-k")
    assert caller == "admin" and caller is not ADMIN and ADMIN != "admin"
    assert view.allowed_models(caller) == {"mine"}
    assert view.limit_for(caller) == 1
    with pytest.raises(TooManySequences):
        view.check_sequences(caller, 2)
    assert view.allowed_models(ADMIN) == {"b", "mine", "theirs"} and view.limit_for(ADMIN) is None


# -- sequences ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    ({}, 1), ({"n": 3}, 3), ({"n": 2, "best_of": 5}, 5), ({"prompt": ["a", "b", "c"], "n": 4}, 12),
    ({"prompt": [1, 2, 3]}, 1), ({"prompt": [[1, 2], [3]], "n": 2}, 4), ({"prompt": "x", "n": None}, 1),
    ({"prompt_embeds": ["e1", "e2"]}, 2), ({"messages": [{"role": "user", "content": "x"}], "n": 7}, 7),
    ({"n": 0}, 1), ({"prompt": []}, 1),
])
def test_requested_sequences(body: dict, expected: int) -> None:
    assert requested_sequences(body) == expected


@pytest.mark.parametrize("n", ["1024", 2.0, True, [2], {"n": 2}])
def test_sequence_counts_that_are_not_integers_are_refused(n: object) -> None:
    with pytest.raises(InvalidParameter):
        requested_sequences({"n": n})


def test_a_request_above_the_cap_is_400_too_many_sequences(world: World) -> None:
    c = world.make()  # acme: max_in_flight 2 (so at most 2 per request); globex: the default cap 16
    for key, body in ((world.keys["acme"], {"n": 1024}), (world.keys["acme"], {"n": 3}),
                      (world.keys["acme"], {"prompt": ["a", "b", "c"]}), (world.keys["globex"], {"n": 17}),
                      (world.keys["globex"], {"prompt": ["a"] * 4, "n": 5})):
        model = "sql" if key == world.keys["acme"] else "pirate"
        resp = c.post("/v1/completions", json={"model": model, "prompt": "x", **body}, headers=bearer(key))
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["code"] == "too_many_sequences"
    assert _complete(c, world.keys["acme"], n=2).status_code == 200
    assert _complete(c, world.keys["globex"], "pirate", n=16).status_code == 200
    assert _complete(c, ADMIN_TOKEN, n=1024).status_code == 200  # the operator is not limited
    bad = _complete(c, world.keys["acme"], n="2")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"


def test_the_per_tenant_override_of_the_cap(world: World) -> None:
    world.registry.security.max_sequences_per_request = 4
    world.registry.tenant("globex").max_sequences_per_request = 8  # type: ignore[union-attr]
    world.save()
    c = world.make()
    assert _complete(c, world.keys["globex"], "pirate", n=8).status_code == 200
    assert _complete(c, world.keys["globex"], "pirate", n=9).status_code == 400


def test_the_in_flight_limit_counts_sequences(world: World) -> None:
    """acme may run 2 sequences: one request with n=2 in flight leaves no room for a third sequence."""
    gate = threading.Event()
    c = world.make(app=fake_vllm(gate))
    c.__enter__()
    results: list[int] = []
    held = threading.Thread(target=lambda: results.append(_complete(c, world.keys["acme"], n=2).status_code))
    held.start()
    try:
        end = time.monotonic() + 5
        while world.metrics.get_sample_value("tenantserve_requests_in_flight", {"tenant": "acme"}) != 1:
            assert time.monotonic() < end
            time.sleep(0.01)
        limited = _complete(c, world.keys["acme"])
        assert limited.status_code == 429 and "asks for 1" in limited.json()["error"]["message"]
    finally:
        gate.set()
        held.join(5)
        c.__exit__(None, None, None)
    assert results == [200]
    assert _complete(c, world.keys["acme"], n=2).status_code == 200  # both released


# -- JSON depth --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [100_000, 2_000, 65])
def test_deeply_nested_json_is_400_invalid_json(world: World, depth: int) -> None:
    body = b'{"model": "sql", "prompt": "x", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    resp = world.make().post("/v1/completions", content=body, headers=bearer(world.keys["acme"]))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json", resp.text[:200]


def test_ordinary_nesting_passes(world: World) -> None:
    body = b'{"model": "sql", "prompt": "x", "extra": ' + b"[" * 40 + b"]" * 40 + b"}"
    assert world.make().post("/v1/completions", content=body, headers=bearer(world.keys["acme"])).status_code == 200


# -- model cards and vLLM's own 404s ----------------------------------------------------------------------------

def test_tenant_model_cards_carry_only_openai_fields(world: World) -> None:
    c = world.make()
    cards = c.get("/v1/models", headers=bearer(world.keys["acme"])).json()["data"]
    assert {tuple(sorted(card)) for card in cards} == {("created", "id", "object", "owned_by")}
    admin_cards = c.get("/v1/models", headers=bearer(ADMIN_TOKEN)).json()["data"]
    assert all("root" in card for card in admin_cards)  # the sidecar's reconciler reads root/parent


def test_vllms_model_not_found_becomes_the_middlewares(world: World) -> None:
    c = world.make()
    gone = _complete(c, world.keys["acme"], "sql", prompt="as-if-unloaded")
    unknown = _complete(c, world.keys["acme"], "no-such")
    assert gone.status_code == unknown.status_code == 404
    assert gone.content.replace(b"sql", b"X") == unknown.content.replace(b"no-such", b"X")
    assert b"demo-base" not in gone.content
    other = _complete(c, world.keys["acme"], "sql", prompt="other-404")
    assert other.status_code == 404 and b"resp_1" in other.content  # other 404s pass untouched
    admin = _complete(c, ADMIN_TOKEN, "sql", prompt="as-if-unloaded")
    assert b"Valid aliases" in admin.content  # the operator sees vLLM's own text


# -- identity challenge ------------------------------------------------------------------------------------------

def test_identity_proves_the_admin_token_for_this_port_without_a_credential(world: World) -> None:
    nonce = identity.new_nonce()
    with TestClient(TenantMiddleware(fake_vllm(), registry_path=world.path, environ=ENV,
                                     metrics_registry=CollectorRegistry()),
                    base_url="http://testserver:8123") as c:
        resp = c.post(identity.IDENTITY_ROUTE, json={"nonce": nonce})
        assert resp.status_code == 200, resp.text
        assert identity.verify(ADMIN_TOKEN, nonce, 8123, resp.json()["proof"])
        assert not identity.verify(ADMIN_TOKEN, nonce, 8000, resp.json()["proof"])
        for bad in ({"nonce": "ab"}, {"nonce": nonce.upper()}, {"nonce": nonce, "x": 1}, {}, [nonce]):
            refused = c.post(identity.IDENTITY_ROUTE, json=bad)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json", bad
        assert c.post(identity.IDENTITY_ROUTE, content=b"x" * 5000).status_code == 413
        assert c.get(identity.IDENTITY_ROUTE).status_code in (401, 403)  # any other method: an admin route


def test_identity_without_an_admin_token_is_refused_like_a_missing_route(world: World) -> None:
    c = world.make(env={})
    resp = c.post(identity.IDENTITY_ROUTE, json={"nonce": identity.new_nonce()})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "admin_disabled"


# -- cache salt --------------------------------------------------------------------------------------------------

def test_the_salt_is_an_hmac_of_the_tenant_under_the_server_secret(world: World) -> None:
    c = world.make(env={**ENV, SALT_SECRET_ENV: "s3cret"})
    salt = _complete(c, world.keys["acme"], cache_salt="tenant-globex").json()["cache_salt"]
    assert salt == hmac.new(b"s3cret", b"acme", hashlib.sha256).hexdigest()
    other = world.make()  # no secret: a random one per process
    assert _complete(other, world.keys["acme"]).json()["cache_salt"] != salt


class WithSalt(BaseModel):
    model: str
    cache_salt: str | None = None


class WithoutSalt(BaseModel):
    model: str


def _routed_app() -> FastAPI:
    app = FastAPI()

    @app.post("/gen")
    async def gen(request: WithSalt) -> dict:
        return {"cache_salt": request.cache_salt}

    @app.post("/either")
    async def either(request: WithoutSalt | WithSalt) -> dict:
        return {}

    @app.post("/v1/messages/count_tokens")
    async def count(request: WithoutSalt) -> dict:
        return {"extra": request.model_extra if hasattr(request, "model_extra") else None}

    return app


def test_salted_routes_come_from_the_body_models() -> None:
    assert salted_paths(_routed_app()) == {"/gen", "/either"}
    assert salted_paths(object()) is None


def test_a_route_whose_body_has_no_cache_salt_gets_none(world: World) -> None:
    app = _routed_app()
    app.add_middleware(TenantMiddleware, registry_path=world.path, environ=ENV,
                       metrics_registry=CollectorRegistry())
    with TestClient(app) as c:  # the lifespan runs: the middleware reads the app's routes
        resp = c.post("/v1/messages/count_tokens", json={"model": "sql", "cache_salt": "x"},
                      headers=bearer(world.keys["acme"]))
        assert resp.status_code == 200  # passed through, the client's field left as sent (vLLM ignores it there)


def test_every_generation_route_of_vllm_is_salted() -> None:
    """Built from vLLM 0.32's own routers: the derived set has every route whose request model has cache_salt."""
    from types import SimpleNamespace

    from vllm.entrypoints.anthropic import api_router as anthropic
    from vllm.entrypoints.openai.chat_completion import api_router as chat
    from vllm.entrypoints.openai.completion import api_router as completion
    from vllm.entrypoints.openai.responses import api_router as responses
    from vllm.entrypoints.serve.tokenize import api_router as tokenize

    app = FastAPI()
    app.state.args = SimpleNamespace()
    for module in (anthropic, chat, completion, responses, tokenize):
        module.attach_router(app)
    derived = salted_paths(app)
    assert {"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages"} <= derived
    assert "/tokenize" not in derived and "/detokenize" not in derived
