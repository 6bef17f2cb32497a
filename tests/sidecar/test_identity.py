"""The admin token goes only to a server that proved it is this engine (``tenantserve.engine.identity``).

The "engines" here are tiny local HTTP servers that record every header (tests/sidecar/squatter.py): a program on
the engine's port must never see the token, whatever it answers; the real middleware's side is tested against the
secured engine (tests/integration/test_sidecar_secured.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tenantserve.errors import EngineError
from tenantserve.sidecar.engine_client import EngineClient, EngineUnverified
from tests.sidecar.serving import TOKEN, SidecarThread
from tests.sidecar.squatter import Squatter


def _calls(client: EngineClient) -> list[str]:
    """Every call that would carry the token; the codes of the errors they raised."""
    async def run() -> list[str]:
        codes = []
        for call in (client.models(), client.load("x", "/p"), client.unload("x"), client.complete("x", "hi"),
                     client.busy_adapters()):
            try:
                await call
                codes.append("ok")
            except EngineError as exc:
                codes.append(exc.code)
        await client.aclose()
        return codes

    return asyncio.run(run())


@pytest.mark.parametrize("behaviour", [
    {},  # 404 on the challenge, like any other program
    {"proof": "0" * 64},  # a made-up answer
    {"prove_with": "another-token"},  # an engine of another deployment
    {"prove_with": TOKEN, "proof_port": 8000},  # a relay: the real engine's proof, for the port it listens on
])
def test_a_server_that_does_not_prove_itself_is_never_sent_the_token(behaviour: dict) -> None:
    with Squatter(**behaviour) as squatter:
        client = EngineClient(squatter.url, token=TOKEN)
        assert _calls(client) == ["engine_unverified"] * 5
        assert not client.verified
    assert squatter.authorizations() == []
    assert squatter.paths() == ["/tenantserve/identity"] * 5  # it was asked, and sent nothing else


def test_a_proven_engine_gets_the_token_but_not_on_health_or_the_challenge() -> None:
    with Squatter(prove_with=TOKEN) as engine:
        client = EngineClient(engine.url, token=TOKEN)
        assert asyncio.run(client.healthy())
        assert _calls(client) == ["ok", "ok", "ok", "ok", "ok"]
    sent = {p: h.get("authorization") for _, p, h in engine.requests}
    assert sent["/health"] is None and sent["/tenantserve/identity"] is None
    assert sent["/v1/models"] == sent["/v1/load_lora_adapter"] == sent["/v1/completions"] == sent["/metrics"] \
        == f"Bearer {TOKEN}"
    assert engine.paths().count("/tenantserve/identity") == 1  # proven once, not per call


def test_no_token_at_all_when_the_registry_turns_auth_off() -> None:
    with Squatter(prove_with=TOKEN) as engine:
        assert _calls(EngineClient(engine.url, token=TOKEN, send_token=False))[0] == "ok"
    assert engine.authorizations() == [] and "/tenantserve/identity" not in engine.paths()


def test_a_new_server_on_the_port_after_a_failure_must_prove_itself_again() -> None:
    """The engine died and another program took its port: the proof is forgotten on the failed health check."""
    async def run(port: int) -> tuple[bool, bool, str]:
        async with asyncio.timeout(30):
            client = EngineClient(f"http://127.0.0.1:{port}", token=TOKEN)
            await client.models()
            proven = client.verified
            engine.__exit__()
            healthy = await client.healthy()
            with Squatter(port=port) as squatter:
                try:
                    await client.models()
                    code = "ok"
                except EngineUnverified as exc:
                    code = exc.code
                squatter_auth.extend(squatter.authorizations())
            await client.aclose()
            return proven, healthy, code

    squatter_auth: list[str] = []
    engine = Squatter(prove_with=TOKEN).__enter__()
    proven, healthy, code = asyncio.run(run(engine.port))
    assert proven and not healthy and code == "engine_unverified" and squatter_auth == []


@pytest.fixture
def secured_registry(registry_file: Path) -> Path:
    data = yaml.safe_load(registry_file.read_text())
    data["security"] = {"auth": True}
    registry_file.write_text(yaml.safe_dump(data))
    return registry_file


def test_a_sidecar_pointed_at_a_squatter_never_sends_the_token(
    secured_registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reconciler keeps retrying (engine_unverified), logs one line, and onboarding answers 502 with the
    reason; the squatter sees health checks and challenges, never the token."""
    caplog.set_level(logging.INFO, logger="tenantserve.sidecar")
    with Squatter() as squatter, SidecarThread(secured_registry, squatter.url, reconcile_interval=0.2) as sidecar:
        with sidecar.client() as c:
            _wait(lambda: c.get("/admin/reconcile").json()["runs"] >= 3, 20)
            status = c.get("/admin/reconcile").json()
            resp = c.post("/admin/reconcile")
        assert status["last_result"] == "engine_unverified" and status["engine_verified"] is False
        assert resp.json() == {"result": "engine_unverified"}
        assert sidecar.sample("tenantserve_reconcile_runs_total", result="engine_unverified") >= 3
    assert squatter.authorizations() == []
    assert "/health" in squatter.paths() and squatter.paths().count("/tenantserve/identity") >= 3
    lines = [r for r in caplog.records if "did not prove" in r.getMessage()]
    assert len(lines) == 1 and str(squatter.port) in lines[0].getMessage()


def test_a_sidecar_next_to_a_proven_engine_reconciles(secured_registry: Path) -> None:
    with Squatter(prove_with=TOKEN) as engine, SidecarThread(secured_registry, engine.url) as sidecar:
        with sidecar.client() as c:
            _wait(lambda: c.get("/admin/reconcile").json()["engine_verified"] is True, 20)
    assert f"Bearer {TOKEN}" in engine.authorizations()


def _wait(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)
