"""The sidecar next to a real engine WITH the tenant middleware (tenant keys, admin token, identity proof).

One engine of its own (the sidecar writes its registry; the security tests' engine stays untouched). Checks that the
sidecar proves the engine before sending it the token, and that 201 means usable: the registry is written before
the answer, and the middleware reads it on the very next request, so the tenant's key works at once (no sleep, no
retry), while another tenant's key still gets 404.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tenantserve.admission.fingerprint import fingerprint
from tenantserve.demo import embedded
from tests.conftest import EMBEDDED
from tests.integration.engines import RunningEngine, copy_secured_registry, start_engine
from tests.sidecar.serving import SidecarThread

ADMIN_TOKEN = "tsadmin-" + "sidecar-secured-admin-token"


@dataclass
class Secured:
    engine: RunningEngine
    sidecar: SidecarThread
    keys: dict[str, str]
    tenants: Path  # the sidecar's adapters root
    base_fingerprint: str

    def complete(self, key: str, model: str) -> httpx.Response:
        return httpx.post(f"{self.engine.url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": model, "prompt": embedded.SQL_PROMPT, "max_tokens": 24, "temperature": 0},
                          timeout=60)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("sidecar-secured")
    path, keys = copy_secured_registry(tmp / "adapters.yaml")
    engine = start_engine(path, tmp / "engine.log", extra_env={"TENANTSERVE_ADMIN_TOKEN": ADMIN_TOKEN})
    sidecar = SidecarThread(path, engine.url, admin_token=ADMIN_TOKEN, adapters_root=tmp / "tenants")
    try:
        sidecar.start()
        yield Secured(engine, sidecar, keys, tmp / "tenants", fingerprint(engine.registry.base_path).value)
    finally:
        sidecar.stop()
        engine.stop()


def test_the_sidecar_proves_the_engine_then_reconciles_with_the_token(secured: Secured) -> None:
    with secured.sidecar.client(ADMIN_TOKEN) as c:
        deadline = time.monotonic() + 60
        while c.get("/admin/reconcile").json()["engine_verified"] is not True:
            assert time.monotonic() < deadline, c.get("/admin/reconcile").json()
            time.sleep(0.1)
        assert c.post("/admin/reconcile").json() == {"result": "ok"}


def test_right_after_201_the_tenants_key_uses_the_new_adapter(secured: Secured) -> None:
    shutil.copytree(EMBEDDED / "adapters" / "sql", secured.tenants / "acme" / "sql-v2")
    with secured.sidecar.client(ADMIN_TOKEN) as c:
        resp = c.post("/admin/tenants/acme/adapters",
                      json={"name": "acme-sql@v2", "path": "sql-v2", "base_fingerprint": secured.base_fingerprint})
    assert resp.status_code == 201, resp.text
    first = secured.complete(secured.keys["acme"], "acme-sql@v2")  # at once: no sleep, no retry
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["text"].strip() == embedded.SQL_ON_SQL
    other = secured.complete(secured.keys["globex"], "acme-sql@v2")
    unknown = secured.complete(secured.keys["globex"], "no-such-model")
    assert other.status_code == unknown.status_code == 404, other.text  # exactly like an unknown model
    assert other.text.replace("acme-sql@v2", "no-such-model") == unknown.text


def test_a_link_to_another_tenants_weights_is_refused_and_never_served(secured: Secured) -> None:
    steal = secured.tenants / "acme" / "steal"
    shutil.copytree(EMBEDDED / "adapters" / "sql", steal)
    (steal / "adapter_model.safetensors").unlink()
    (steal / "adapter_model.safetensors").symlink_to(EMBEDDED / "adapters" / "pirate" / "adapter_model.safetensors")
    with secured.sidecar.client(ADMIN_TOKEN) as c:
        resp = c.post("/admin/tenants/acme/adapters",
                      json={"name": "steal", "path": "steal", "base_fingerprint": secured.base_fingerprint})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "path_escape", resp.text
    assert secured.complete(secured.keys["acme"], "steal").status_code == 404
