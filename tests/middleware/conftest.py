"""A registry with two tenants and live keys, and a small stand-in for vLLM's app, for the middleware's unit tests.

The stand-in is a fake on purpose: these tests pin the middleware's own decisions in milliseconds; the same
claims run against the real vLLM engine in tests/integration/security/.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from tenantserve.middleware import TenantMiddleware
from tenantserve.registry.keys import issue_key
from tenantserve.registry.schema import AdapterSpec, BaseSpec, Registry, TenantSpec

ADMIN_TOKEN = "admin-secret-token"
METRICS_TOKEN = "metrics-secret-token"
ENV = {"TENANTSERVE_ADMIN_TOKEN": ADMIN_TOKEN, "TENANTSERVE_METRICS_TOKEN": METRICS_TOKEN}
LOOPBACK = ("127.0.0.1", 40000)
REMOTE = ("203.0.113.9", 40000)


def fake_vllm(gate: threading.Event | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {}

    @app.get("/v1/models")
    async def models() -> dict:
        names = ["demo-base", "sql", "pirate", "french", "loaded-at-runtime"]
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 1, "owned_by": "vllm", "root": f"/srv/models/{n}",
             "parent": None if n == "demo-base" else "demo-base", "max_model_len": 256, "permission": [{}]}
            for n in names]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if body.get("prompt") == "as-if-unloaded":  # vLLM's answer for a name it does not serve (right now)
            return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist. Valid "
                                           "aliases: demo-base.", "type": "NotFoundError", "param": "model",
                                           "code": 404}}, status_code=404)
        if body.get("prompt") == "other-404":
            return JSONResponse({"error": {"message": "Response resp_1 not found", "type": "NotFoundError",
                                           "param": None, "code": 404}}, status_code=404)
        if gate is not None:
            await anyio.to_thread.run_sync(gate.wait)
        if body.get("stream"):
            async def chunks():
                for word in ("a", "b", "c"):
                    yield f"data: {word}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(chunks(), media_type="text/event-stream")
        return {"model": body.get("model"), "cache_salt": body.get("cache_salt"), "choices": [{"text": "ok"}],
                "content_length": request.headers.get("content-length"), "body_length": len(await request.body())}

    @app.post("/v1/load_lora_adapter")
    async def load() -> JSONResponse:
        return JSONResponse({"loaded": True})

    @app.post("/adapters")
    async def sagemaker_load() -> JSONResponse:
        return JSONResponse({"loaded": True})

    @app.get("/metrics")
    async def metrics() -> dict:
        return {"metrics": True}

    return app


@dataclass
class World:
    path: Path
    registry: Registry
    keys: dict[str, str]
    make: Callable[..., TestClient]
    metrics: CollectorRegistry = CollectorRegistry()  # of the last client made

    def save(self) -> None:
        self.registry.save(self.path)


@pytest.fixture
def world(tmp_path: Path) -> World:
    reg = Registry(
        base=BaseSpec(name="demo-base", path=Path("base")),
        tenants=[
            TenantSpec(id="acme", adapters=[AdapterSpec(name="sql", path=Path("a/sql"))], max_in_flight=2),
            TenantSpec(id="globex", allow_base=False, adapters=[AdapterSpec(name="pirate", path=Path("a/p"))]),
            TenantSpec(id="initech", adapters=[AdapterSpec(name="french", path=Path("a/f"))]),
        ],
    )
    keys = {t.id: issue_key(t) for t in reg.tenants[:2]}
    path = tmp_path / "adapters.yaml"
    reg.save(path)
    def make(client: tuple[str, int] = LOOPBACK, env: dict[str, str] | None = None, app: FastAPI | None = None,
             **kwargs: object) -> TestClient:
        world.metrics = CollectorRegistry()
        mw = TenantMiddleware(app or fake_vllm(), registry_path=path, environ=ENV if env is None else env,
                              metrics_registry=world.metrics, **kwargs)
        return TestClient(mw, client=client, raise_server_exceptions=True)

    world = World(path, reg, keys, make)
    return world


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
