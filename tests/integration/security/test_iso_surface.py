"""What a tenant sees of the server: model cards with OpenAI's fields only, one 404 shape, 400 for JSON bombs, and
the identity challenge answered without credentials."""

from __future__ import annotations

import httpx
import pytest

from tenantserve.demo import embedded
from tenantserve.engine import identity
from tests.integration.security.conftest import ADMIN_TOKEN, SecuredEngine


def test_tenant_model_cards_have_only_openai_fields(secured: SecuredEngine) -> None:
    with secured.client(secured.keys["acme"]) as c:
        resp = c.get("/v1/models")
    cards = resp.json()["data"]
    assert {m["id"] for m in cards} == {embedded.BASE_MODEL, "sql"}
    assert all(set(card) == {"id", "object", "created", "owned_by"} for card in cards), cards
    assert "root" not in resp.text and "parent" not in resp.text and "/" not in resp.text


def test_vllms_own_model_not_found_reaches_tenants_in_the_middlewares_shape(secured: SecuredEngine) -> None:
    """sql is in the registry but unloaded from vLLM (as while the sidecar reloads it): vLLM's 404 names the base
    ("Valid aliases"); the tenant sees exactly the answer for a name that exists nowhere."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with secured.client(None) as c:
        root = {m["id"]: m["root"] for m in c.get("/v1/models", headers=admin).json()["data"]}["sql"]
        assert c.post("/v1/unload_lora_adapter", headers=admin, json={"lora_name": "sql"}).status_code == 200
        try:
            with secured.client(secured.keys["acme"]) as t:
                gone = t.post("/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 2})
                unknown = t.post("/v1/completions", json={"model": "nope", "prompt": "x", "max_tokens": 2})
                chat_gone = t.post("/v1/chat/completions", json={"model": "sql", "max_tokens": 2,
                                                                 "messages": [{"role": "user", "content": "x"}]})
        finally:
            reloaded = c.post("/v1/load_lora_adapter", headers=admin, json={"lora_name": "sql", "lora_path": root})
    assert reloaded.status_code == 200, reloaded.text
    assert gone.status_code == unknown.status_code == chat_gone.status_code == 404
    assert gone.content.replace(b"sql", b"X") == unknown.content.replace(b"nope", b"X") == \
        chat_gone.content.replace(b"sql", b"X")
    assert b"Valid aliases" not in gone.content and embedded.BASE_MODEL.encode() not in gone.content


@pytest.mark.parametrize("depth", [100_000, 5_000, 900, 65])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/messages", "/tokenize"])
def test_deeply_nested_json_is_400_invalid_json(secured: SecuredEngine, depth: int, path: str) -> None:
    body = b'{"model": "sql", "prompt": "x", "x": ' + b"[" * depth + b"]" * depth + b"}"
    with secured.client(secured.keys["acme"]) as c:
        resp = c.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json", resp.text[:200]


def test_no_recursion_traceback_reaches_the_engine_log(secured: SecuredEngine) -> None:
    body = b'{"model": "sql", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with secured.client(secured.keys["acme"]) as c:
        assert c.post("/v1/chat/completions", content=body).status_code == 400
    log = secured.engine.process.log_path.read_text(errors="replace")
    assert "RecursionError" not in log and "maximum recursion depth" not in log


def test_identity_challenge_proves_the_admin_token_for_this_port(secured: SecuredEngine) -> None:
    port = int(secured.url.rsplit(":", 1)[1])
    nonce = identity.new_nonce()
    for remote in (False, True):  # no credential, from anywhere: it proves the token, it never reveals it
        with secured.client(None, remote=remote) as c:
            resp = c.post(identity.IDENTITY_ROUTE, json={"nonce": nonce})
        assert resp.status_code == 200, resp.text
        assert identity.verify(ADMIN_TOKEN, nonce, port, resp.json()["proof"])
        assert not identity.verify(ADMIN_TOKEN, nonce, port + 1, resp.json()["proof"])
    with secured.client(secured.keys["acme"]) as c:
        for bad in ({"nonce": "00"}, {"nonce": 7}, {"nonce": nonce, "model": "sql"}, {}):
            refused = c.post(identity.IDENTITY_ROUTE, json=bad)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json"
        assert c.post(identity.IDENTITY_ROUTE, content=b"{").status_code == 400


def test_identity_is_never_passed_to_vllm(secured: SecuredEngine) -> None:
    """vLLM has no such route: a 404 from it would show the request reached it. Only POST is the challenge."""
    with httpx.Client(base_url=secured.url) as c:
        assert c.post(identity.IDENTITY_ROUTE, json={"nonce": identity.new_nonce()}).status_code == 200
        assert c.get(identity.IDENTITY_ROUTE).status_code in (401, 403)
