"""The identity proof never raises on what a server answers: a squatter on the engine's port may answer anything,
and the sidecar must see "unverified" (and not send the token), not a TypeError from ``hmac.compare_digest``."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tenantserve.engine import identity
from tenantserve.sidecar.engine_client import EngineClient, EngineUnverified

TOKEN = "admin-secret-token"


@pytest.mark.parametrize("answer", ["é" * 64, "\udcff" * 64, "ｆ" * 64, "", None, 7, ["x"], {"p": 1}],
                         ids=["latin", "surrogate", "fullwidth", "empty", "null", "int", "list", "dict"])
def test_a_non_proof_is_false_not_an_exception(answer: object) -> None:
    nonce = identity.new_nonce()
    assert identity.verify(TOKEN, nonce, 8000, answer) is False


def test_the_real_proof_still_verifies_and_a_near_miss_does_not() -> None:
    nonce = identity.new_nonce()
    good = identity.proof(TOKEN, nonce, 8000)
    assert identity.verify(TOKEN, nonce, 8000, good)
    assert not identity.verify(TOKEN, nonce, 8000, good[:-1] + ("0" if good[-1] != "0" else "1"))
    assert not identity.verify(TOKEN, nonce, 8000, good[:-1] + "é")


@pytest.mark.parametrize("proof", ["é" * 64, "\u0000" * 64, 12], ids=["non-ascii", "nul", "int"])
def test_the_sidecar_client_calls_a_squatter_unverified_and_sends_no_token(proof: object) -> None:
    seen: list[httpx.Request] = []

    def squatter(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"proof": proof})

    async def run() -> None:
        client = EngineClient("http://127.0.0.1:8000", token=TOKEN, transport=httpx.MockTransport(squatter))
        try:
            with pytest.raises(EngineUnverified):
                await client.verify()
            assert not client.verified
        finally:
            await client.aclose()

    asyncio.run(run())
    assert seen and all("authorization" not in r.headers for r in seen)
