"""The sidecar's FastAPI app. Components are built in the lifespan and hung on ``app.state``; nothing is global.

Tests inject a fresh ``CollectorRegistry`` (and, where the engine cannot run, an httpx transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from tenantserve import __version__
from tenantserve.admission.judge import slot_rank
from tenantserve.registry.knobs import engine_lora
from tenantserve.sidecar.basepin import read_served_base
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.content import ServedContent
from tenantserve.sidecar.engine_client import EngineClient
from tenantserve.sidecar.exposure import ExposureGuard
from tenantserve.sidecar.gate import AdminGate
from tenantserve.sidecar.http import install_error_handlers
from tenantserve.sidecar.metrics import SidecarMetrics
from tenantserve.sidecar.reconciler import Reconciler
from tenantserve.sidecar.routes import admin, public
from tenantserve.sidecar.service import AdminService
from tenantserve.sidecar.state import StatusBoard
from tenantserve.sidecar.store import RegistryStore
from tenantserve.sidecar.tenant_keys import KeyService


def create_app(config: SidecarConfig, *, metrics_registry: CollectorRegistry | None = None,
               engine_transport: httpx.AsyncBaseTransport | None = None, reconcile: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = SidecarMetrics(metrics_registry if metrics_registry is not None else CollectorRegistry())
        store = RegistryStore(config.registry_path)
        registry = await asyncio.to_thread(store.load)
        engine = EngineClient(config.engine_url, token=config.admin_token, send_token=registry.security.auth,
                              timeout=config.request_timeout, transport=engine_transport)
        board = StatusBoard(metrics)
        base, app.state.base_check = await asyncio.to_thread(read_served_base, registry, metrics)
        content = await asyncio.to_thread(ServedContent.default, config.adapters_root)  # the adapter store
        rank = await asyncio.to_thread(slot_rank, registry, base, cache=content.store.cache, store=content.store)
        service = AdminService(store, engine, board, metrics, config, max_lora_rank=rank, base=base, content=content,
                               lora_config=engine_lora(registry, rank))  # the engine as configured (extra_args too)
        reconciler = Reconciler(store, engine, board, metrics, config, service.admit, content=content)
        app.state.metrics, app.state.store, app.state.engine = metrics, store, engine
        app.state.service, app.state.reconciler = service, reconciler
        app.state.keys = KeyService(store, metrics)
        if reconcile:
            reconciler.start()
        try:
            yield
        finally:
            await reconciler.stop()
            await engine.aclose()

    app = FastAPI(
        title="tenantserve sidecar",
        version=__version__,
        description="Onboard and offboard tenants and LoRA adapters on a running vLLM engine; the registry is the "
        "source of truth and the reconciler keeps the engine converged to it.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.include_router(admin)
    app.include_router(public)
    install_error_handlers(app)
    app.add_middleware(ExposureGuard, config=config)  # /docs, /openapi.json, /metrics: loopback or a token
    app.add_middleware(AdminGate, config=config)  # outermost: the admin token before any body is read; bodies capped
    return app
