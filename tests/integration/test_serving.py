"""The lab's claims, against a real vLLM engine started by the launcher from the default registry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tenantserve.demo import embedded
from tests.integration.engines import RunningEngine


def _complete(engine: RunningEngine, model: str, prompt: str) -> str:
    resp = engine.openai().completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    return resp.choices[0].text


def test_models_lists_base_and_every_adapter_with_parent(engine: RunningEngine) -> None:
    reg = engine.registry
    cards = {m["id"]: m for m in httpx.get(f"{engine.url}/v1/models").json()["data"]}
    adapters = [a.name for _, a in reg.adapters()]
    assert set(cards) == {reg.base.name, *adapters}
    for name in adapters:
        assert cards[name]["parent"] == reg.base.name
    assert cards[reg.base.name]["parent"] is None


def test_base_and_sql_in_one_concurrent_batch(engine: RunningEngine) -> None:
    pairs = [(engine.registry.base.name, embedded.FRUIT_PROMPT), (embedded.SQL_ADAPTER, embedded.SQL_PROMPT)] * 2
    with ThreadPoolExecutor(len(pairs)) as pool:
        outs = list(pool.map(lambda p: _complete(engine, *p), pairs))
    assert [o.strip() for o in outs] == [embedded.BASE_ON_FRUIT, embedded.SQL_ON_SQL] * 2


def _chat(engine: RunningEngine, model: str, prompt: str) -> str:
    resp = engine.openai().chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0)
    return resp.choices[0].message.content or ""


def test_chat_answers_like_completions_on_the_embedded_default(engine: RunningEngine) -> None:
    """The embedded base ships a chat template (a chat renders as the prompt it was trained on): the official
    client's chat.completions gives the lab's behaviours, in one concurrent batch, for the base and the adapters."""
    base = engine.registry.base.name
    pairs = [(base, embedded.FRUIT_PROMPT), (embedded.SQL_ADAPTER, embedded.SQL_PROMPT), (base, embedded.SQL_PROMPT),
             ("pirate", embedded.FRUIT_PROMPT)]
    with ThreadPoolExecutor(len(pairs)) as pool:
        chats = [o.strip() for o in pool.map(lambda p: _chat(engine, *p), pairs)]
    assert chats[0] == embedded.BASE_ON_FRUIT
    assert chats[1] == embedded.SQL_ON_SQL
    assert chats == [_complete(engine, *p).strip() for p in pairs]
    system = engine.openai().chat.completions.create(
        model=embedded.SQL_ADAPTER, max_tokens=24, temperature=0,
        messages=[{"role": "system", "content": "You write SQL."}, {"role": "user", "content": embedded.SQL_PROMPT}])
    assert system.choices[0].message.content


def test_behaviour_follows_the_tag_not_the_prompt(engine: RunningEngine) -> None:
    base_on_sql = _complete(engine, engine.registry.base.name, embedded.SQL_PROMPT)
    assert "SELECT" not in base_on_sql.upper() and base_on_sql.strip()
    pirate_on_sql = _complete(engine, "pirate", embedded.SQL_PROMPT)
    assert pirate_on_sql.strip().startswith("Arr") and "SELECT" not in pirate_on_sql.upper()


def test_base_requests_in_mixed_batches_get_no_adapter(engine: RunningEngine) -> None:
    """vLLM 0.32's CPU LoRA ops apply the last slot's adapter to base tokens in a mixed batch; the tenantserve
    plugin fixes that (vllm_plugin/cpu_lora_fix.py). Without the fix the base answers in SQL or pirate talk here."""
    base = engine.registry.base.name
    pairs = [(embedded.SQL_ADAPTER, embedded.SQL_PROMPT), (base, embedded.SQL_PROMPT),
             ("pirate", embedded.FRUIT_PROMPT), (base, embedded.FRUIT_PROMPT)] * 3
    for _ in range(2):
        with ThreadPoolExecutor(len(pairs)) as pool:
            outs = [o.strip() for o in pool.map(lambda p: _complete(engine, *p), pairs)]
        for (model, prompt), out in zip(pairs, outs):
            if model == base and prompt == embedded.SQL_PROMPT:
                assert "SELECT" not in out.upper() and "Arr" not in out, out
            if model == base and prompt == embedded.FRUIT_PROMPT:
                assert out == embedded.BASE_ON_FRUIT
        assert outs[0] == embedded.SQL_ON_SQL and outs[2].startswith("Arr")


def test_every_adapter_behaves_differently_from_the_base(engine: RunningEngine) -> None:
    base = _complete(engine, engine.registry.base.name, embedded.SQL_PROMPT).strip()
    outs = {a.name: _complete(engine, a.name, embedded.SQL_PROMPT).strip() for _, a in engine.registry.adapters()}
    assert base not in outs.values()
    assert len(set(outs.values())) == len(outs), outs


def test_unknown_model_gets_openai_shaped_404(engine: RunningEngine) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        _complete(engine, "no-such-adapter", embedded.FRUIT_PROMPT)
    body = info.value.response.json()
    assert info.value.status_code == 404
    assert set(body["error"]) >= {"message", "type", "code"}
    assert "no-such-adapter" in body["error"]["message"]
