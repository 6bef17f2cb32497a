"""Registry changes on the running secured engine: in force for the very next request; keys that would let one
tenant authenticate as another, and tenants named like the admin, are refused (the last good registry stays)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import yaml

from tenantserve.demo import embedded
from tenantserve.registry.keys import hash_key, issue_key
from tenantserve.registry.schema import Registry
from tests.integration.security.conftest import ADMIN_TOKEN, SecuredEngine


def _models(secured: SecuredEngine, key: str) -> tuple[int, set[str]]:
    with secured.client(key) as c:
        resp = c.get("/v1/models")
    return resp.status_code, ({m["id"] for m in resp.json()["data"]} if resp.status_code == 200 else set())


def test_a_key_written_to_the_registry_works_for_the_very_next_request(secured: SecuredEngine) -> None:
    for _ in range(5):  # no sleep between the write and the request: the file is stat'ed per request
        key = secured.edit(lambda reg: issue_key(reg.tenant("globex")))  # type: ignore[arg-type]
        assert _models(secured, key) == (200, {"pirate"})


@pytest.fixture
def restore(secured: SecuredEngine):
    text = secured.registry_path.read_text()
    yield
    secured.registry_path.write_text(text)
    assert _models(secured, secured.keys["acme"])[0] == 200  # the good registry is back in force


def test_a_tenant_named_admin_is_refused_and_never_becomes_the_admin(secured: SecuredEngine, restore) -> None:
    key = "tsk-" + "a" * 43
    created = datetime.now(UTC).isoformat()
    text = secured.registry_path.read_text()  # a hand edit: Registry.save would refuse to write this
    entry = (f"- id: admin\n  allow_base: true\n  api_keys:\n  - id: key-0123456789ab\n"
             f"    sha256: {hash_key(key)}\n    created: '{created}'\n")
    text = re.sub(r"^tenants:\n", "tenants:\n" + entry, text, count=1, flags=re.M)
    secured.registry_path.write_text(text)
    assert _models(secured, key)[0] == 401  # refused at load: the key authenticates as nobody
    with secured.client(key) as c:
        assert c.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}).status_code in (401, 403)
    assert _models(secured, secured.keys["acme"]) == (200, {embedded.BASE_MODEL, "sql"})  # last good registry


def test_the_same_key_hash_in_two_tenants_is_refused_at_reload(secured: SecuredEngine, restore) -> None:
    """globex's key hash copied into acme's keys: the reload is refused, so the key keeps meaning globex only."""
    data = yaml.safe_load(secured.registry_path.read_text())
    tenants = {t["id"]: t for t in data["tenants"]}
    stolen = tenants["globex"]["api_keys"][0]
    tenants["acme"]["api_keys"].append({**stolen, "id": "key-fedcba987654"})
    secured.registry_path.write_text(yaml.safe_dump(data, sort_keys=False))  # a hand edit
    with pytest.raises(Exception, match="duplicate API key sha256"):
        Registry.load(secured.registry_path, check_paths=False)
    assert _models(secured, secured.keys["globex"]) == (200, {"pirate"})
    assert _models(secured, ADMIN_TOKEN)[0] == 200
