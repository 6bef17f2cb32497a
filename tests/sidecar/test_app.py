"""The admin API over real HTTP (uvicorn) with no engine behind it: auth, the one error shape, validation,
admission refusals, duplicates, unknown names, tenants and keys, metrics. Refusals must change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tenantserve.registry.schema import Registry
from tests.sidecar.serving import SidecarThread


#: vLLM's ``type`` per status (``create_error_response``): the sidecar answers in the engine's vocabulary.
VLLM_TYPES = {400: "BadRequestError", 401: "UnauthorizedError", 404: "NotFoundError", 409: "ConflictError",
              422: "UnprocessableEntityError"}


def _error(resp, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["type"] == VLLM_TYPES[status], body
    return body["error"]


def test_admin_routes_need_the_token(sidecar: SidecarThread) -> None:
    with sidecar.client(token=None) as c:
        _error(c.get("/admin/tenants"), 401, "missing_token")
    with sidecar.client(token="wrong") as c:
        _error(c.get("/admin/adapters"), 401, "invalid_token")
    with sidecar.client() as c:
        assert c.get("/admin/tenants").status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/docs").status_code == 200
        assert "/admin/tenants/{tenant_id}/adapters" in c.get("/openapi.json").json()["paths"]


def test_tenants_add_is_idempotent_conflicts_are_409_and_remove_unknown_is_404(sidecar: SidecarThread) -> None:
    with sidecar.client() as c:
        assert c.post("/admin/tenants", json={"id": "globex"}).status_code == 201
        assert c.post("/admin/tenants", json={"id": "globex"}).status_code == 200
        _error(c.post("/admin/tenants", json={"id": "globex", "allow_base": False}), 409, "tenant_exists")
        assert [t["id"] for t in c.get("/admin/tenants").json()] == ["acme", "globex"]
        assert c.delete("/admin/tenants/globex").status_code == 200
        _error(c.delete("/admin/tenants/globex"), 404, "tenant_not_found")
        assert [t.id for t in Registry.load(sidecar.config.registry_path, check_paths=False).tenants] == ["acme"]
    assert sidecar.sample("tenantserve_sidecar_operations_total", operation="onboard_tenant", result="created") == 0
    assert sidecar.sample("tenantserve_sidecar_operations_total", operation="onboard_tenant", result="ok") == 1
    assert sidecar.sample("tenantserve_sidecar_operations_total", operation="onboard_tenant", result="unchanged") == 1
    assert sidecar.sample("tenantserve_sidecar_operations_total", operation="onboard_tenant", result="refused") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"id": "Bad Id"},  # pattern
        {"tenant": "x"},  # unknown key, missing id
        "not json",
    ],
)
def test_malformed_bodies_are_422_in_the_error_shape(sidecar: SidecarThread, body: object) -> None:
    before = sidecar.config.registry_path.read_text()
    with sidecar.client() as c:
        if isinstance(body, str):
            resp = c.post("/admin/tenants", content=body, headers={"content-type": "application/json"})
        else:
            resp = c.post("/admin/tenants", json=body)
        _error(resp, 422, "malformed_request")
        _error(c.post("/admin/tenants/acme/adapters", json={"name": "x y", "path": "/p"}), 422, "malformed_request")
    assert sidecar.config.registry_path.read_text() == before


def test_admission_refusals_are_400_with_their_reason_and_change_nothing(
    sidecar: SidecarThread, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    before = sidecar.config.registry_path.read_text()
    no_config = tmp_path / "adapters" / "acme" / "empty-adapter"
    no_config.mkdir(parents=True)
    cases = {
        "rank_too_high": str(make_adapter("acme/big", rank=16)),  # absolute, inside the tenant's folder
        "not_lora": "ia3" if make_adapter("acme/ia3", peft_type="IA3") else "",  # relative to the tenant's folder
        "path_missing": "does-not-exist",
        "config_missing": str(no_config),
    }
    with sidecar.client() as c:
        for code, path in cases.items():
            err = _error(c.post("/admin/tenants/acme/adapters", json={"name": f"n-{code}", "path": path}), 400, code)
            assert f"n-{code}" in err["message"]
        _error(c.post("/admin/tenants/nobody/adapters", json={"name": "x", "path": cases["rank_too_high"]}),
               404, "tenant_not_found")
        _error(c.delete("/admin/tenants/acme/adapters/nope"), 404, "adapter_not_found")
        _error(c.get("/admin/no-such-route"), 404, "not_found")
    assert sidecar.config.registry_path.read_text() == before
    assert sidecar.sample("tenantserve_sidecar_operations_total", operation="onboard_adapter", result="refused") == 5


def test_duplicate_adapter_names_are_409(sidecar: SidecarThread, make_adapter: Callable[..., Path]) -> None:
    make_adapter("acme/other")
    make_adapter("globex/other")
    other = "other"
    before = sidecar.config.registry_path.read_text()
    with sidecar.client() as c:
        c.post("/admin/tenants", json={"id": "globex"})
        before = sidecar.config.registry_path.read_text()
        _error(c.post("/admin/tenants/globex/adapters", json={"name": "sql", "path": other}), 409, "adapter_exists")
        _error(c.post("/admin/tenants/acme/adapters", json={"name": "sql", "path": other}), 409, "adapter_exists")
        _error(c.post("/admin/tenants/acme/adapters", json={"name": "demo-base", "path": other}), 409,
               "adapter_exists")
    assert sidecar.config.registry_path.read_text() == before


def test_keys_issue_list_revoke_persist_only_hashes(sidecar: SidecarThread) -> None:
    with sidecar.client() as c:
        issued = c.post("/admin/tenants/acme/keys")
        assert issued.status_code == 201
        key, key_id = issued.json()["key"], issued.json()["key_id"]
        listed = c.get("/admin/tenants/acme/keys").json()
        assert [k["id"] for k in listed] == [key_id] and "sha256" not in listed[0] and not listed[0]["revoked"]
        assert c.delete(f"/admin/tenants/acme/keys/{key_id}").status_code == 204
        assert c.get("/admin/tenants/acme/keys").json()[0]["revoked"] is True
        _error(c.delete("/admin/tenants/acme/keys/key-00000000"), 404, "key_not_found")
        _error(c.post("/admin/tenants/nobody/keys"), 404, "tenant_not_found")
    text = sidecar.config.registry_path.read_text()
    assert key not in text and key_id in text


def test_metrics_exposes_the_contract_names(sidecar: SidecarThread) -> None:
    with sidecar.client(token=None) as c:
        text = c.get("/metrics").text
    for name in ("tenantserve_sidecar_operations_total", "tenantserve_sidecar_operation_seconds",
                 "tenantserve_adapter_warmup_seconds", "tenantserve_reconcile_runs_total",
                 "tenantserve_reconcile_errors_total", "tenantserve_adapters{state=\"loaded\"}",
                 "tenantserve_base_fingerprint_checks_total"):
        assert name in text, name
    assert "vllm:" not in text
    assert json.dumps(text)  # plain text exposition
