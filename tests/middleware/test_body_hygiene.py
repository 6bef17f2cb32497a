"""Tenant bodies vLLM would mishandle are refused by the middleware (red-team findings): NaN/Infinity literals
(not JSON; vLLM let one through in logit_bias), lone surrogate escapes (vLLM's tokenizer answered 500), a tenant's
own scheduling priority (with a priority scheduler it would jump other tenants' queues). Admin bodies are vLLM's."""

from __future__ import annotations

import pytest

from tenantserve.middleware.policy import check_tenant_priority
from tests.middleware.conftest import ADMIN_TOKEN, World, bearer


@pytest.mark.parametrize("body", [
    b'{"model": "sql", "prompt": "x", "logit_bias": {"5": NaN}}',
    b'{"model": "sql", "prompt": "x", "temperature": Infinity}',
    b'{"model": "sql", "prompt": "x", "top_p": -Infinity}',
    b'{"model": "sql", "prompt": "x", "stop": ["\\ud800"]}',
    b'{"model": "sql", "prompt": "\\udfff x"}',
    b'{"model": "sql", "prompt": "x", "extra": {"\\ud83d": 1}}',
])
def test_non_json_numbers_and_lone_surrogates_are_400(world: World, body: bytes) -> None:
    resp = world.make().post("/v1/completions", content=body,
                             headers={**bearer(world.keys["acme"]), "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_json"


def test_valid_unicode_and_deep_scalars_pass(world: World) -> None:
    c = world.make()
    ok = c.post("/v1/completions", headers=bearer(world.keys["acme"]),
                json={"model": "sql", "prompt": "caf\u00e9 \U0001f600 \\ud800 (escaped text)", "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    nested: object = "leaf"
    for _ in range(63):  # 63 containers plus the body: 64 levels, scalars below them do not count
        nested = [nested]
    deep = c.post("/v1/completions", headers=bearer(world.keys["acme"]),
                  json={"model": "sql", "prompt": "x", "extra": nested})
    assert deep.status_code == 200, deep.text


@pytest.mark.parametrize("priority", [-100, 1, 1.5, True, "high"])
def test_a_tenant_may_not_set_its_priority(world: World, priority: object) -> None:
    resp = world.make().post("/v1/completions", headers=bearer(world.keys["acme"]),
                             json={"model": "sql", "prompt": "x", "priority": priority})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "priority", resp.text


def test_priority_zero_or_absent_and_the_admin_pass(world: World) -> None:
    check_tenant_priority({"priority": 0})
    check_tenant_priority({})
    c = world.make()
    assert c.post("/v1/completions", headers=bearer(world.keys["acme"]),
                  json={"model": "sql", "prompt": "x", "priority": 0}).status_code == 200
    assert c.post("/v1/completions", headers=bearer(ADMIN_TOKEN),
                  json={"model": "sql", "prompt": "x", "priority": -5}).status_code == 200
