"""Shapes a hostile-tenant review found after the isolation work, on the real secured engine: each was a 500 or got
through to vLLM; each is now a 400 in the middleware's shape, and the tenant's next ordinary request still works."""

from __future__ import annotations

import pytest

from tenantserve.demo import embedded
from tests.integration.security.conftest import SecuredEngine

RAW = [
    b'{"model": "sql", "prompt": "hi", "max_tokens": 2, "stop": ["\\ud800"]}',  # vLLM: 500
    b'{"model": "sql", "prompt": "hi", "max_tokens": 2, "logit_bias": {"5": NaN}}',  # vLLM: 200
    b'{"model": "sql", "prompt": "\\ud800", "max_tokens": 2}',
    b'{"model": "sql", "prompt": "hi", "max_tokens": 2, "priority": -100}',
]


@pytest.mark.parametrize("body", RAW, ids=["lone-surrogate-stop", "nan-logit-bias", "lone-surrogate-prompt",
                                           "priority"])
def test_bodies_vllm_mishandles_are_400(secured: SecuredEngine, body: bytes) -> None:
    with secured.client(secured.keys["initech"]) as c:  # initech: at most 1 in flight, so a leak would show
        resp = c.post("/v1/completions", content=body.replace(b'"sql"', b'"french"'),
                      headers={"content-type": "application/json"})
        assert resp.status_code == 400, resp.text
        assert set(resp.json()["error"]) >= {"message", "type", "code"}
        ok = c.post("/v1/completions", json={"model": "french", "prompt": embedded.FRUIT_PROMPT, "max_tokens": 4})
        assert ok.status_code == 200, ok.text
