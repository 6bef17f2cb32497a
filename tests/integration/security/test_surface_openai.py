"""The OpenAI surface as clients use it, on the secured real engine (issue 14, items 9 and 10): the official
``openai`` client's ``models.retrieve`` (sync and async), routes a tenant may not use answered like vLLM's missing
routes, trailing slashes redirected like vLLM does, a client ``cache_salt`` and a non-string ``model`` refused like
vLLM refuses them, jittered ``Retry-After`` on 429, and the admin's own traffic kept out of per-tenant metrics.
Where a claim is "like vLLM", vLLM's own answer is read from the same engine (admin token) and compared."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenantserve.demo import embedded
from tests.integration.security.conftest import ADMIN_TOKEN, SecuredEngine, wait_until

COMPLETION = {"model": "sql", "prompt": "x", "max_tokens": 2}


def _sdk(secured: SecuredEngine, key: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=secured.url + "/v1/", max_retries=0, timeout=120, **kwargs)


def test_sdk_retrieves_its_own_models_card_only(secured: SecuredEngine) -> None:
    client = _sdk(secured, secured.keys["acme"])
    for model in ("sql", embedded.BASE_MODEL):
        raw = client.models.with_raw_response.retrieve(model)
        assert raw.http_response.status_code == 200
        assert set(raw.http_response.json()) == {"id", "object", "created", "owned_by"}
        assert raw.parse().id == model
    with pytest.raises(openai.NotFoundError) as nowhere:  # the bytes of a name that exists nowhere, to compare with
        client.models.retrieve("no-such-model")
    for foreign in ("pirate", "french"):
        with pytest.raises(openai.NotFoundError) as exc:
            client.models.retrieve(foreign)
        assert exc.value.response.content.replace(foreign.encode(), b"X") == \
            nowhere.value.response.content.replace(b"no-such-model", b"X")
    with pytest.raises(openai.NotFoundError):  # globex may not use the base
        _sdk(secured, secured.keys["globex"]).models.retrieve(embedded.BASE_MODEL)
    with pytest.raises(openai.AuthenticationError):
        _sdk(secured, "tsk-wrong").models.retrieve("sql")


def test_async_sdk_retrieve_and_admin_card(secured: SecuredEngine) -> None:
    async def run() -> tuple[str, int]:
        async with openai.AsyncOpenAI(api_key=secured.keys["globex"], base_url=secured.url + "/v1",
                                      max_retries=0) as client:
            card = await client.models.retrieve("pirate")
            try:
                await client.models.retrieve("sql")
            except openai.NotFoundError as exc:
                return card.id, exc.status_code
            return card.id, 200

    assert asyncio.run(run()) == ("pirate", 404)
    with secured.client(ADMIN_TOKEN) as c:  # the admin sees vLLM's whole card (root: where it was loaded from)
        full = c.get("/v1/models/pirate")
    assert full.status_code == 200 and "root" in full.json()


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/load_lora_adapter"), ("POST", "/adapters"), ("DELETE", "/adapters/sql"), ("POST", "/sleep"),
    ("POST", "/collective_rpc"), ("GET", "/v1/completions"), ("POST", "/v1/models"), ("GET", "/server_info"),
    ("GET", "/no/such/route"),
])
def test_tenant_key_on_a_non_tenant_route_is_not_found(secured: SecuredEngine, method: str, path: str) -> None:
    """vLLM's status and text for a route that does not exist (its own body is Starlette's ``{"detail": ...}``),
    in the OpenAI error shape; the same bytes for an admin route as for a route that exists nowhere."""
    with secured.client(ADMIN_TOKEN) as c:
        vllm_missing = c.get("/tenantserve-no-such-route")  # vLLM answers this one itself
    assert vllm_missing.status_code == 404 and vllm_missing.json() == {"detail": "Not Found"}
    with secured.client(secured.keys["acme"]) as c:
        nowhere = c.get("/tenantserve-no-such-route")
    assert nowhere.json() == {"error": {"message": "Not Found", "type": "Not Found", "param": None, "code": 404}}
    for remote in (False, True):
        with secured.client(secured.keys["acme"], remote=remote) as c:
            resp = c.request(method, path, json={})
        assert resp.status_code == 404 and resp.content == nowhere.content, resp.text
    with pytest.raises(openai.NotFoundError):  # what the SDK makes of it
        _sdk(secured, secured.keys["acme"]).post("/load_lora_adapter", cast_to=object, body={"lora_name": "x"})


def test_trailing_slash_redirects_like_vllm_and_the_acl_applies(secured: SecuredEngine) -> None:
    with secured.client(ADMIN_TOKEN) as c:  # vLLM's own answer (the admin's request passes straight through)
        vllm = c.post("/v1/completions/", json=COMPLETION, follow_redirects=False)
    with secured.client(secured.keys["acme"]) as c:
        ours = c.post("/v1/completions/", json=COMPLETION, follow_redirects=False)
    assert vllm.status_code == ours.status_code == 307
    assert urlsplit(ours.headers["location"]).path == urlsplit(vllm.headers["location"]).path == "/v1/completions"
    client = _sdk(secured, secured.keys["acme"])
    assert client.completions.create(model="sql", prompt="x", max_tokens=2).model == "sql"  # base_url ends in /
    followed = client.post("/completions/", cast_to=openai.types.Completion, body=COMPLETION)
    assert followed.model == "sql" and followed.choices
    with pytest.raises(openai.NotFoundError):  # the redirected request is checked like any other
        client.post("/completions/", cast_to=openai.types.Completion, body={**COMPLETION, "model": "pirate"})
    listed = client.get("/models/", cast_to=object)
    assert {m["id"] for m in listed["data"]} == {"sql", embedded.BASE_MODEL}


@pytest.mark.parametrize("salt", ["", 7, ["a"], "a/b"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_salt_vllm_refuses_is_refused_for_tenants_too(secured: SecuredEngine, salt: object, path: str) -> None:
    body = {"model": "sql", "max_tokens": 2, "cache_salt": salt}
    body.update({"prompt": "x"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]})
    with secured.client(ADMIN_TOKEN) as c:  # the admin's salt is not replaced: this is vLLM's answer
        vllm = c.post(path, json=body)
    with secured.client(secured.keys["acme"]) as c:
        ours = c.post(path, json=body)
    assert vllm.status_code == ours.status_code == 400, (vllm.text, ours.text)
    assert ours.json()["error"]["param"] == "cache_salt" and "cache_salt" in vllm.text


@pytest.mark.parametrize("model", [123, 1.5, True, ["sql"], {"id": "sql"}])
def test_non_string_model_is_400_and_unknown_name_404(secured: SecuredEngine, model: object) -> None:
    for key in (secured.keys["acme"], ADMIN_TOKEN):
        with secured.client(key) as c:
            resp = c.post("/v1/completions", json={**COMPLETION, "model": model})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "model", resp.text
    with pytest.raises(openai.BadRequestError):
        _sdk(secured, secured.keys["acme"]).completions.create(model=model, prompt="x", max_tokens=2)  # type: ignore
    with pytest.raises(openai.NotFoundError):
        _sdk(secured, secured.keys["acme"]).completions.create(model="pirate", prompt="x", max_tokens=2)


def test_429_retry_after_is_computed_bounded_and_differs(secured: SecuredEngine) -> None:
    """initech may have 1 request in flight; the engine is paused (vLLM's dev route) so it stays there while
    its next requests are refused; each refusal's Retry-After is whole seconds in 1..30 and they are not all
    the same (the jitter spans at least two seconds: 20 equal values would have a chance below 2^-19)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    key = secured.keys["initech"]

    def held() -> int:
        with secured.client(key, timeout=120) as c:
            return c.post("/v1/completions", json={"model": "french", "prompt": "x", "max_tokens": 4}).status_code

    def in_flight() -> float:
        with secured.client(None) as c:
            for family in text_string_to_metric_families(c.get("/metrics").text):
                for s in family.samples:
                    if s.name == "tenantserve_requests_in_flight" and s.labels.get("tenant") == "initech":
                        return s.value
        return 0.0

    with secured.client(None) as c:
        assert c.post("/pause", params={"mode": "keep"}, headers=admin).status_code == 200
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(held)
            wait_until(lambda: in_flight() == 1, timeout=30)
            with secured.client(key) as c:
                refused = [c.post("/v1/completions", json={"model": "french", "prompt": "x", "max_tokens": 1})
                           for _ in range(20)]
            with secured.client(None) as c:
                assert c.post("/resume", headers=admin).status_code == 200
            assert first.result(timeout=120) == 200
    finally:
        with secured.client(None) as c:
            c.post("/resume", headers=admin)
    assert [r.status_code for r in refused] == [429] * 20
    waits = [int(r.headers["retry-after"]) for r in refused]
    assert all(1 <= w <= 30 for w in waits) and len(set(waits)) >= 2, waits


def test_admin_polling_is_in_no_per_tenant_series(secured: SecuredEngine) -> None:
    with secured.client(ADMIN_TOKEN) as c:  # what the sidecar does: poll the list, warm an adapter up
        assert c.get("/v1/models").status_code == 200
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
        assert c.post("/v1/completions", json={**COMPLETION, "model": 5}).status_code == 400
    with secured.client(secured.keys["acme"]) as c:
        assert c.post("/v1/completions", json=COMPLETION).status_code == 200
    with httpx.Client(base_url=secured.url) as c:
        text = c.get("/metrics").text
    tenants = {s.labels["tenant"] for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("tenantserve_") and "tenant" in s.labels}
    assert "acme" in tenants and "admin" not in tenants, tenants
