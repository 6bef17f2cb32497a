"""The admin API's routes: a few lines each; ``AdminService`` does the work."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenantserve.api_errors import ErrorResponse
from tenantserve.errors import Reason, RegistryError
from tenantserve.registry.schema import Registry
from tenantserve.sidecar.engine_client import EngineClient, EngineUnverified
from tenantserve.sidecar.errors import Unauthorized
from tenantserve.sidecar.http import require_admin
from tenantserve.sidecar.protocol import (
    AdapterCreate,
    AdapterView,
    KeyIssued,
    OffboardView,
    RegistryView,
    TenantCreate,
    TenantView,
)
from tenantserve.sidecar.service import AdminService
from tenantserve.sidecar.state import AdapterStatus

_errors = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 422, 502, 503)}
admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], responses=_errors)  # type: ignore[arg-type]
public = APIRouter()


def service(request: Request) -> AdminService:
    return request.app.state.service


def _view(s: AdapterStatus) -> AdapterView:
    return AdapterView(name=s.name, tenant=s.tenant, path=s.path, state=s.state.value, last_error=s.last_error,
                       error_code=s.error_code, load_seconds=s.load_seconds, warmup_seconds=s.warmup_seconds,
                       attempts=s.attempts)


#: Set on ``GET /admin/tenants`` and ``GET /admin/adapters`` while the registry file is broken (the lists then show
#: the last good registry): ``path:line: key: message``, escaped to one latin-1 line.
REGISTRY_ERROR_HEADER = "X-Tenantserve-Registry-Error"


async def _registry_state(request: Request, response: Response) -> tuple[Registry | None, str | None]:
    registry, error = await asyncio.to_thread(request.app.state.store.check)
    if error is not None:
        response.headers[REGISTRY_ERROR_HEADER] = header_safe(error)
    return registry, error


def header_safe(text: str) -> str:
    one_line = " | ".join(part for part in text.splitlines() if part.strip())
    return one_line.encode("latin-1", "backslashreplace").decode("latin-1")[:4096]


@admin.get("/tenants", response_model=list[TenantView])
async def list_tenants(request: Request, response: Response) -> list[TenantView]:
    """Every tenant; while the registry file is broken, the last good one's (header ``X-Tenantserve-Registry-Error``).
    """
    registry, error = await _registry_state(request, response)
    if registry is None:  # broken since the sidecar started: nothing good to show
        raise RegistryError(error or "the registry cannot be read")
    return [TenantView(id=t.id, allow_base=t.allow_base, adapters=[a.name for a in t.adapters])
            for t in registry.tenants]


@admin.get("/registry", response_model=RegistryView)
async def registry_status(request: Request, response: Response) -> RegistryView:
    """Is the registry file valid now? ``error``: why not (path:line: key: message); the services keep the last good
    registry meanwhile."""
    _, error = await _registry_state(request, response)
    return RegistryView(path=str(request.app.state.store.path), valid=error is None, error=error)


@admin.post("/tenants", response_model=TenantView, status_code=201)
async def add_tenant(body: TenantCreate, response: Response, svc: AdminService = Depends(service)) -> TenantView:
    tenant, created = await svc.add_tenant(body)
    response.status_code = 201 if created else 200
    return TenantView(id=tenant.id, allow_base=tenant.allow_base, adapters=[a.name for a in tenant.adapters])


@admin.delete("/tenants/{tenant_id}", response_model=list[OffboardView])
async def remove_tenant(tenant_id: str, svc: AdminService = Depends(service)) -> list[OffboardView]:
    return await svc.remove_tenant(tenant_id)


@admin.post("/tenants/{tenant_id}/adapters", response_model=AdapterView, status_code=201)
async def add_adapter(tenant_id: str, body: AdapterCreate, response: Response,
                      svc: AdminService = Depends(service)) -> AdapterView:
    status, created = await svc.add_adapter(tenant_id, body)
    response.status_code = 201 if created else 200
    return _view(status)


@admin.delete("/tenants/{tenant_id}/adapters/{name}", response_model=OffboardView)
async def remove_adapter(tenant_id: str, name: str, svc: AdminService = Depends(service)) -> OffboardView:
    return await svc.remove_adapter(tenant_id, name)


@admin.get("/adapters", response_model=list[AdapterView])
async def list_adapters(request: Request, response: Response, svc: AdminService = Depends(service)
                        ) -> list[AdapterView]:
    """Every adapter's state; header ``X-Tenantserve-Registry-Error`` while the registry file is broken."""
    await _registry_state(request, response)
    return [_view(s) for s in svc.adapters()]


@admin.get("/reconcile")
async def reconcile_status(request: Request) -> dict:
    s = request.app.state.reconciler.status
    return {"runs": s.runs, "last_result": s.last_result, "last_run_at": s.last_run_at, "last_seconds": s.last_seconds,
            "last_error": s.last_error, "last_plan": s.last_plan, "engine_healthy": s.engine_healthy,
            "engine_verified": s.engine_verified}


@admin.post("/reconcile")
async def reconcile_now(request: Request) -> dict:
    result = await request.app.state.reconciler.run_once()
    return {"result": result}


@admin.post("/tenants/{tenant_id}/keys", response_model=KeyIssued, status_code=201)
async def issue_key(tenant_id: str, request: Request) -> KeyIssued:
    key_id, key = await request.app.state.keys.issue(tenant_id)
    return KeyIssued(tenant=tenant_id, key_id=key_id, key=key)


@admin.get("/tenants/{tenant_id}/keys")
async def list_keys(tenant_id: str, request: Request) -> list[dict]:
    return [k.model_dump(mode="json", exclude={"sha256"}) for k in await request.app.state.keys.list(tenant_id)]


@admin.delete("/tenants/{tenant_id}/keys/{key_id}", status_code=204)
async def revoke_key(tenant_id: str, key_id: str, request: Request) -> Response:
    await request.app.state.keys.revoke(tenant_id, key_id)
    return Response(status_code=204)


@public.get("/healthz", include_in_schema=False)
async def healthz() -> dict:
    """Live: the sidecar process answers (nothing else is checked; see ``/readyz``)."""
    return {"status": "ok"}


@public.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Ready: the engine answers ``/health`` and proved its identity (when a token is sent), and the registry file is
    valid. 200 or 503, the body naming each check: ``{"status", "checks": {"engine", "registry"}, "problems"}``;
    the problems' messages (file paths, registry lines) only with the admin token."""
    engine: EngineClient = request.app.state.engine
    problems: list[dict[str, str]] = []
    if not await engine.healthy():
        problems.append({"check": "engine", "code": Reason.ENGINE_DOWN,
                         "message": f"the engine at {engine.base_url} does not answer /health"})
    elif engine.needs_proof:
        try:
            await engine.verify()
        except EngineUnverified as exc:
            problems.append({"check": "engine", "code": exc.code, "message": exc.message})
    _, error = await asyncio.to_thread(request.app.state.store.check)
    if error is not None:
        problems.append({"check": "registry", "code": Reason.REGISTRY_INVALID, "message": error})
    try:
        await require_admin(request)
        detailed = True
    except Unauthorized:
        detailed = False
    failed = {p["check"]: p["code"] for p in problems}
    body = {"status": "not_ready" if problems else "ready",
            "checks": {c: failed.get(c, "ok") for c in ("engine", "registry")},
            "problems": problems if detailed else [{k: v for k, v in p.items() if k != "message"} for p in problems]}
    return JSONResponse(body, status_code=503 if problems else 200)


@public.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


__all__ = ["admin", "public"]
