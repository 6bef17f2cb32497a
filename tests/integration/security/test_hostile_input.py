"""Model names and bodies built to slip past the ACL: path separators, look-alikes, huge strings, JSON tricks."""

from __future__ import annotations

import json

import pytest

from tests.integration.security.conftest import SecuredEngine

HOSTILE_MODELS = [
    "../pirate", "pirate/../sql", "sql/../../pirate", "/pirate", "pirate/", "./pirate", "pirate\\", "..\\pirate",
    "PIRATE", "pirate ", " pirate", "pirate\u0000", "pirate\n", "ｐｉｒａｔｅ", "рirate",  # fullwidth, Cyrillic р
    "pir\u200bate", "pira\u0301te", "x" * 100_000, "", "*", "%2e%2e/pirate", "sql,pirate", "sql pirate",
]


def _post(secured: SecuredEngine, key: str, content: bytes | str, path: str = "/v1/completions"):
    with secured.client(key) as c:
        return c.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("model", HOSTILE_MODELS, ids=[repr(m[:20]) for m in HOSTILE_MODELS])
def test_hostile_model_names_are_unknown_models(secured: SecuredEngine, model: str) -> None:
    resp = _post(secured, secured.keys["acme"], json.dumps({"model": model, "prompt": "x", "max_tokens": 2}))
    assert resp.status_code == 404, resp.text[:300]
    assert resp.json()["error"]["type"] == "NotFoundError"


@pytest.mark.parametrize("model", [["pirate"], {"name": "pirate"}, 1, True, {"$ref": "pirate"}])
def test_non_string_models_never_reach_an_adapter(secured: SecuredEngine, model: object) -> None:
    resp = _post(secured, secured.keys["acme"], json.dumps({"model": model, "prompt": "x", "max_tokens": 2}))
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"  # vLLM's answer too


def test_duplicate_model_keys_are_read_the_same_way_as_vllm(secured: SecuredEngine) -> None:
    """JSON with two "model" keys: the middleware and vLLM must agree on which one counts (the last)."""
    crossed = _post(secured, secured.keys["acme"], '{"model": "sql", "prompt": "x", "max_tokens": 2, "model": "pirate"}')
    assert crossed.status_code == 404
    own = _post(secured, secured.keys["acme"], '{"model": "pirate", "prompt": "x", "max_tokens": 2, "model": "sql"}')
    assert own.status_code == 200 and own.json()["model"] == "sql"


def test_escaped_and_injected_names(secured: SecuredEngine) -> None:
    escaped = _post(secured, secured.keys["acme"], '{"model": "\\u0070irate", "prompt": "x", "max_tokens": 2}')
    assert escaped.status_code == 404
    injected = _post(secured, secured.keys["acme"],
                     json.dumps({"model": 'sql", "model": "pirate', "prompt": "x", "max_tokens": 2}))
    assert injected.status_code == 404
    nested = _post(secured, secured.keys["acme"],
                   json.dumps({"model": "sql", "prompt": "x", "max_tokens": 2, "extra_body": {"model": "pirate"}}))
    assert nested.status_code in (200, 400) and "pirate" not in nested.text


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"null", b"\xff\xfe\x00", b""])
def test_malformed_bodies_are_400(secured: SecuredEngine, body: bytes) -> None:
    assert _post(secured, secured.keys["acme"], body).status_code == 400


def test_oversized_bodies_are_413(secured: SecuredEngine) -> None:
    big = json.dumps({"model": "sql", "prompt": "x" * (2 << 20)})
    resp = _post(secured, secured.keys["acme"], big)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"

    def chunked():
        for _ in range(64):
            yield b" " * 65536

    with secured.client(secured.keys["acme"]) as c:
        streamed = c.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_other_routes_with_a_model_field_are_checked_too(secured: SecuredEngine) -> None:
    for path, body in (("/tokenize", {"model": "pirate", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "pirate", "messages": [{"role": "user", "content": "x"}]})):
        assert _post(secured, secured.keys["acme"], json.dumps(body), path).status_code == 404
    ok = _post(secured, secured.keys["acme"], json.dumps({"model": "sql", "prompt": "x"}), "/tokenize")
    assert ok.status_code == 200
