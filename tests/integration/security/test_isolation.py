"""Two tenants on one real engine: each sees and uses only its own fine-tunes, through the real openai client."""

from __future__ import annotations

import openai
import pytest

from tenantserve.demo import embedded
from tests.integration.security.conftest import ADMIN_TOKEN, SecuredEngine


def _oa(secured: SecuredEngine, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{secured.url}/v1", api_key=key, max_retries=0, timeout=60)


def _complete(secured: SecuredEngine, key: str, model: str, prompt: str = embedded.SQL_PROMPT) -> str:
    resp = _oa(secured, key).completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    return resp.choices[0].text.strip()


def test_each_tenant_reaches_its_own_adapter(secured: SecuredEngine) -> None:
    assert _complete(secured, secured.keys["acme"], "sql") == embedded.SQL_ON_SQL
    assert _complete(secured, secured.keys["acme"], embedded.BASE_MODEL, embedded.FRUIT_PROMPT) == \
        embedded.BASE_ON_FRUIT
    assert _complete(secured, secured.keys["globex"], "pirate")
    assert _complete(secured, secured.keys["initech"], "french")


@pytest.mark.parametrize(("tenant", "model"), [
    ("acme", "pirate"), ("acme", "french"), ("globex", "sql"), ("globex", embedded.BASE_MODEL), ("initech", "sql"),
])
def test_crossing_answers_exactly_like_an_unknown_model(secured: SecuredEngine, tenant: str, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as crossed:
        _complete(secured, secured.keys[tenant], model)
    # What vLLM itself answers for a model that does not exist (the admin token passes the ACL):
    with pytest.raises(openai.NotFoundError) as vllm_own:
        _complete(secured, ADMIN_TOKEN, "no-such-model")
    # What the same tenant gets for a name that exists nowhere:
    with pytest.raises(openai.NotFoundError) as unknown:
        _complete(secured, secured.keys[tenant], "no-such-model")
    ours = crossed.value.response.json()["error"]
    theirs = vllm_own.value.response.json()["error"]
    assert crossed.value.status_code == vllm_own.value.status_code == 404
    assert {k: v for k, v in ours.items() if k != "message"} == {k: v for k, v in theirs.items() if k != "message"}
    assert theirs["message"].startswith(ours["message"].replace(model, "no-such-model"))
    # vLLM appends "Valid aliases: <base>"; tenants never see that variant, and what they do see is identical:
    assert crossed.value.response.content.replace(model.encode(), b"X") == \
        unknown.value.response.content.replace(b"no-such-model", b"X")


def test_models_lists_exactly_what_the_caller_may_use(secured: SecuredEngine) -> None:
    def ids(key: str) -> set[str]:
        return {m.id for m in _oa(secured, key).models.list().data}

    assert ids(secured.keys["acme"]) == {embedded.BASE_MODEL, "sql"}
    assert ids(secured.keys["globex"]) == {"pirate"}
    assert ids(secured.keys["initech"]) == {embedded.BASE_MODEL, "french"}
    assert ids(ADMIN_TOKEN) == {embedded.BASE_MODEL, "sql", "pirate", "french"}


@pytest.mark.parametrize("key", [None, "", "tsk-not-a-real-key", "Bearer x"])
def test_no_key_or_a_wrong_key_is_401(secured: SecuredEngine, key: str | None) -> None:
    with secured.client(key) as c:
        for resp in (c.post("/v1/completions", json={"model": "sql", "prompt": "x"}),
                     c.post("/v1/chat/completions", json={"model": "sql", "messages": []}),
                     c.get("/v1/models")):
            assert resp.status_code == 401, resp.text
            assert set(resp.json()["error"]) >= {"message", "type", "code"}


def test_streaming_with_auth(secured: SecuredEngine) -> None:
    stream = _oa(secured, secured.keys["acme"]).completions.create(
        model="sql", prompt=embedded.SQL_PROMPT, max_tokens=24, temperature=0, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text.strip() == embedded.SQL_ON_SQL
    with pytest.raises(openai.NotFoundError):
        _oa(secured, secured.keys["globex"]).completions.create(model="sql", prompt="x", max_tokens=4, stream=True)
    with pytest.raises(openai.AuthenticationError):
        _oa(secured, "tsk-wrong").completions.create(model="sql", prompt="x", max_tokens=4, stream=True)
