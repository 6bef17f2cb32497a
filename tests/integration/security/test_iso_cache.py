"""The prefix cache is never shared across tenants, on any generation route, whatever ``cache_salt`` a client sends.

A prompt of >128 tokens (the CPU block size) is needed for a cached block; each test uses a fresh prompt so earlier
runs never pre-warm it. Positive controls (the same tenant again) show the cache does hit, so the test can fail.
"""

from __future__ import annotations

import secrets

import httpx
import openai
import pytest

from tenantserve.demo import embedded
from tests.integration.security.conftest import SecuredEngine

A, B = "acme", "initech"  # both may use the base


def _prompt(secured: SecuredEngine, tokens: int = 145) -> str:
    """A fresh prompt of ``tokens``..``tokens`` + 40 tokens (counted by /tokenize), never sent before."""
    words = [secrets.token_hex(2) for _ in range(4 * tokens)]
    n = tokens // 2
    with secured.client(secured.keys[A]) as c:
        for _ in range(8):
            text = " ".join(words[:n])
            count = c.post("/tokenize", json={"model": embedded.BASE_MODEL, "prompt": text}).json()["count"]
            if tokens <= count <= tokens + 40:
                return text
            n = max(1, round(n * (tokens + 15) / count))
    raise AssertionError("could not build a prompt of the right length")


def _oa(secured: SecuredEngine, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{secured.url}/v1", api_key=secured.keys[tenant], max_retries=0, timeout=60)


def _completion_cached(secured: SecuredEngine, tenant: str, prompt: str, **extra: object) -> int:
    resp = _oa(secured, tenant).completions.create(model=embedded.BASE_MODEL, prompt=prompt, max_tokens=1,
                                                   temperature=0, extra_body=extra or None)
    return resp.usage.prompt_tokens_details.cached_tokens


def _chat_cached(secured: SecuredEngine, tenant: str, prompt: str, **extra: object) -> int:
    resp = _oa(secured, tenant).chat.completions.create(
        model=embedded.BASE_MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=1, temperature=0,
        extra_body=extra or None)
    return resp.usage.prompt_tokens_details.cached_tokens


def _messages_cached(secured: SecuredEngine, tenant: str, prompt: str, **extra: object) -> int:
    body = {"model": embedded.BASE_MODEL, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}], **extra}
    with httpx.Client(base_url=secured.url, headers={"x-api-key": secured.keys[tenant]}, timeout=60) as c:
        resp = c.post("/v1/messages", json=body)
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()["usage"]["cache_read_input_tokens"]


def _responses_cached(secured: SecuredEngine, tenant: str, prompt: str, **extra: object) -> int:
    resp = _oa(secured, tenant).responses.create(model=embedded.BASE_MODEL, input=prompt, max_output_tokens=1,
                                                 temperature=0, extra_body=extra or None)
    return resp.usage.input_tokens_details.cached_tokens


ROUTES = {"completions": _completion_cached, "chat": _chat_cached, "messages": _messages_cached,
          "responses": _responses_cached}


@pytest.mark.parametrize("route", list(ROUTES))
def test_another_tenant_never_hits_the_first_tenants_cache(secured: SecuredEngine, route: str) -> None:
    cached = ROUTES[route]
    # B tries every salt it could guess for A (the old scheme's, A's id, none), each on a prompt only A has sent
    for salt in ({"cache_salt": f"tenant-{A}"}, {"cache_salt": A}, {}):
        prompt = _prompt(secured)
        assert cached(secured, A, prompt) == 0  # cold
        assert cached(secured, B, prompt, **salt) == 0, (route, salt)
        assert cached(secured, A, prompt) >= 128  # positive control: the same tenant does hit


def test_messages_salt_is_the_tenants_not_the_clients(secured: SecuredEngine) -> None:
    """A's own requests hit their cache whatever salt A sends: the client's value is overwritten, not mixed in."""
    prompt = _prompt(secured)
    assert _messages_cached(secured, A, prompt, cache_salt="one") == 0
    assert _messages_cached(secured, A, prompt, cache_salt="two") >= 128
