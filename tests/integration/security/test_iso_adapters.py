"""The only adapter a request runs is its ACL-checked ``model``: never one named by a chat content part's ``type``
(vLLM's "default multimodal LoRA"), whatever the route, the part's shape, or the adapter's name."""

from __future__ import annotations

import httpx
import pytest

from tenantserve.demo import embedded
from tests.integration.security.conftest import ADMIN_TOKEN, SecuredEngine


def _part(part_type: str, text: str = embedded.FRUIT_PROMPT) -> dict:
    return {"type": part_type, "uuid": "u1", "tool_reference": 1, "name": text}


def _chat(secured: SecuredEngine, key: str, content: object, model: str | None = embedded.BASE_MODEL,
          path: str = "/v1/chat/completions") -> httpx.Response:
    body: dict = {"messages": [{"role": "user", "content": content}], "max_tokens": 16, "temperature": 0}
    if model is not None:
        body["model"] = model
    with secured.client(key) as c:
        return c.post(path, json=body)


def _text(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def outputs(secured: SecuredEngine) -> dict[str, str]:
    """What the base and the pirate adapter answer to the attack body when picked by ``model`` (the admin may)."""
    found = {name: _text(_chat(secured, ADMIN_TOKEN, [_part("pirate")], model=name))
             for name in (embedded.BASE_MODEL, "pirate", "sql")}
    assert found[embedded.BASE_MODEL] != found["pirate"]  # otherwise this file could not tell them apart
    return found


@pytest.mark.parametrize("model", [embedded.BASE_MODEL, None])
@pytest.mark.parametrize("part_type", ["pirate", "pirate_url", "pirate_x_y"])
def test_a_content_part_typed_like_another_tenants_adapter_runs_the_base(
        secured: SecuredEngine, outputs: dict[str, str], model: str | None, part_type: str) -> None:
    resp = _chat(secured, secured.keys["acme"], [_part(part_type)], model=model)
    assert resp.json()["model"] == embedded.BASE_MODEL, resp.text[:300]
    assert _text(resp) == outputs[embedded.BASE_MODEL] != outputs["pirate"]


def test_other_part_shapes_and_several_parts(secured: SecuredEngine, outputs: dict[str, str]) -> None:
    for content in ([{"type": "pirate", "text": embedded.FRUIT_PROMPT}],
                    [_part("pirate"), {"type": "text", "text": " "}],
                    [_part("pirate"), _part("sql")],
                    [{"type": "pirate_url", "pirate_url": {"url": "x"}, "uuid": "u2"}]):
        resp = _chat(secured, secured.keys["acme"], content)
        if resp.status_code == 200:
            assert resp.json()["model"] == embedded.BASE_MODEL
            assert _text(resp) != outputs["pirate"], content
        else:
            assert resp.status_code == 400, resp.text[:300]  # vLLM refusing the shape is fine too


def test_own_adapter_by_content_part_is_not_applied_either(secured: SecuredEngine, outputs: dict[str, str]) -> None:
    """acme may use sql, but only through ``model``: a base request stays a base request."""
    resp = _chat(secured, secured.keys["acme"], [_part("sql")])
    assert resp.json()["model"] == embedded.BASE_MODEL and _text(resp) == outputs[embedded.BASE_MODEL]


def test_a_tenant_without_base_access_cannot_reach_the_base_or_another_adapter(secured: SecuredEngine) -> None:
    resp = _chat(secured, secured.keys["globex"], [_part("sql")], model="pirate")
    assert resp.status_code == 200 and resp.json()["model"] == "pirate"
    assert _chat(secured, secured.keys["globex"], [_part("pirate")], model=None).status_code == 404


def test_anthropic_messages_with_adapter_typed_blocks_run_the_requested_model(
        secured: SecuredEngine, outputs: dict[str, str]) -> None:
    body = {"model": embedded.BASE_MODEL, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "pirate", "text": embedded.FRUIT_PROMPT}]}]}
    with secured.client(secured.keys["acme"]) as c:
        resp = c.post("/v1/messages", json=body)
    assert resp.status_code in (200, 400), resp.text[:300]
    if resp.status_code == 200:
        assert resp.json()["model"] == embedded.BASE_MODEL


def test_an_adapter_named_text_loaded_at_runtime_is_never_applied_by_part_type(
        secured: SecuredEngine, outputs: dict[str, str]) -> None:
    """The registry refuses the name ``text``; the operator can still load one by hand through vLLM's admin route.
    Even then, an ordinary chat request (text parts) on the base runs the base."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with secured.client(None) as c:
        roots = {m["id"]: m["root"] for m in c.get("/v1/models", headers=admin).json()["data"]}
        loaded = c.post("/v1/load_lora_adapter", headers=admin, json={"lora_name": "text", "lora_path": roots["pirate"]})
        assert loaded.status_code == 200, loaded.text
        try:
            plain = _chat(secured, secured.keys["acme"], [{"type": "text", "text": embedded.FRUIT_PROMPT}])
            as_string = _chat(secured, secured.keys["acme"], embedded.FRUIT_PROMPT)
            by_model = _text(_chat(secured, ADMIN_TOKEN, embedded.FRUIT_PROMPT, model="text"))
        finally:
            c.post("/v1/unload_lora_adapter", headers=admin, json={"lora_name": "text"})
    assert plain.json()["model"] == as_string.json()["model"] == embedded.BASE_MODEL
    assert _text(plain) == _text(as_string) != by_model


def test_every_other_route_that_selects_adapters_ignores_part_types(secured: SecuredEngine) -> None:
    """/tokenize with chat messages (the other route tenants reach with ``messages``) answers for the base."""
    body = {"model": embedded.BASE_MODEL, "messages": [{"role": "user", "content": [_part("pirate")]}]}
    with secured.client(secured.keys["acme"]) as c:
        resp = c.post("/tokenize", json=body)
    assert resp.status_code in (200, 400), resp.text[:300]
