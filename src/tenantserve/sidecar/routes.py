"""The admin API's routes: a few lines each; ``AdminService`` does the work."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenantserve.sidecar.http import require_admin
from tenantserve.sidecar.protocol import (
    AdapterCreate,
    AdapterView,
    ErrorResponse,
    KeyIssued,
    OffboardView,
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


@admin.get("/tenants", response_model=list[TenantView])
async def list_tenants(svc: AdminService = Depends(service)) -> list[TenantView]:
    return [TenantView(id=t.id, allow_base=t.allow_base, adapters=[a.name for a in t.adapters])
            for t in await svc.tenants()]


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
async def list_adapters(svc: AdminService = Depends(service)) -> list[AdapterView]:
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
    return {"status": "ok"}


@public.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


__all__ = ["admin", "public"]
