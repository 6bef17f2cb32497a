"""Tenant keys: high-entropy, shown once, stored as hashes, several per tenant, revocable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tenantserve.errors import TenantNotFound
from tenantserve.registry import keys
from tenantserve.registry.schema import BaseSpec, Registry, TenantSpec


def _registry() -> Registry:
    return Registry(base=BaseSpec(name="b", path=Path("b")), tenants=[TenantSpec(id="acme"), TenantSpec(id="globex")])


def test_issue_returns_plaintext_once_and_stores_only_its_hash() -> None:
    reg = _registry()
    key = keys.issue_key(reg.tenants[0])
    assert key.startswith(keys.KEY_PREFIX) and len(key) >= 40
    [spec] = keys.list_keys(reg.tenants[0])
    assert spec.sha256 == keys.hash_key(key) and not spec.revoked
    assert key not in reg.to_yaml()


def test_keys_are_unique_and_high_entropy() -> None:
    tenant = TenantSpec(id="acme")
    issued = {keys.issue_key(tenant) for _ in range(50)}
    assert len(issued) == 50 and len({k.id for k in tenant.api_keys}) == 50


def test_authenticate_maps_each_key_to_its_tenant_and_rejects_others() -> None:
    reg = _registry()
    a1, a2, g = keys.issue_key(reg.tenants[0]), keys.issue_key(reg.tenants[0]), keys.issue_key(reg.tenants[1])
    assert keys.authenticate(reg, a1).id == "acme"
    assert keys.authenticate(reg, a2).id == "acme"  # rotation: both live
    assert keys.authenticate(reg, g).id == "globex"
    for wrong in ("", "tsk-", a1 + "x", a1[:-1], g.upper()):
        assert keys.authenticate(reg, wrong) is None


def test_revoked_key_is_refused_and_the_other_still_works() -> None:
    reg = _registry()
    old, new = keys.issue_key(reg.tenants[0]), keys.issue_key(reg.tenants[0])
    old_id = keys.list_keys(reg.tenants[0])[0].id
    keys.revoke_key(reg.tenants[0], old_id)
    assert keys.authenticate(reg, old) is None
    assert keys.authenticate(reg, new).id == "acme"
    assert keys.lookup(keys.key_index(reg), old) is None
    assert keys.lookup(keys.key_index(reg), new) == "acme"


def test_revoke_unknown_key_is_typed_not_found() -> None:
    with pytest.raises(keys.KeyNotFound) as info:
        keys.revoke_key(TenantSpec(id="acme"), "key-00000000")
    assert info.value.code == "key_not_found" and info.value.http_status == 404


def test_keys_survive_a_save_and_load(tmp_path: Path) -> None:
    reg = _registry()
    key = keys.issue_key(reg.tenants[1])
    reg.save(tmp_path / "r.yaml")
    again = Registry.load(tmp_path / "r.yaml", check_paths=False)
    assert keys.authenticate(again, key).id == "globex"
    assert keys.list_keys(again.tenants[1])[0].created == keys.list_keys(reg.tenants[1])[0].created


def test_find_tenant_unknown_is_typed() -> None:
    with pytest.raises(TenantNotFound) as exc:
        keys.find_tenant(_registry(), "nobody")
    assert (exc.value.code, exc.value.http_status, exc.value.exit_code) == ("tenant_not_found", 404, 2)
    assert exc.value.message == "unknown tenant 'nobody'"


def test_one_digest_for_keys_and_tokens() -> None:
    """The stored hash, the index and the middleware's token digests are one function: SHA-256 of the UTF-8
    (lone surrogates kept, so a hostile header cannot make hashing raise)."""
    assert keys.key_digest("tsk-abc") == hashlib.sha256(b"tsk-abc").digest()
    assert keys.hash_key("tsk-abc") == keys.key_digest("tsk-abc").hex()
    assert keys.key_digest("\udcff") != keys.key_digest("\udcfe")


# -- the CLI: parse, call, print, exit code -------------------------------------------------------------------


def test_cli_create_list_revoke_roundtrip(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tenantserve.cli import main

    path = tmp_path / "r.yaml"
    _registry().save(path)
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--tenant", "acme", "--registry", str(path)])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith(keys.KEY_PREFIX) and key not in path.read_text()
    assert keys.authenticate(Registry.load(path, check_paths=False), key).id == "acme"

    listed = runner.invoke(main, ["keys", "list", "--tenant", "acme", "--registry", str(path)])
    key_id, _, status = listed.stdout.split()
    assert status == "active" and key not in listed.output

    revoked = runner.invoke(main, ["keys", "revoke", "--tenant", "acme", key_id, "--registry", str(path)])
    assert revoked.exit_code == 0
    assert keys.authenticate(Registry.load(path, check_paths=False), key) is None
    assert runner.invoke(main, ["keys", "list", "--tenant", "acme", "--registry", str(path)]).stdout.split()[2] \
        == "revoked"


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tenantserve.cli import main

    path = tmp_path / "r.yaml"
    _registry().save(path)
    runner = CliRunner()
    for args, code in ([["keys", "create", "--tenant", "nobody"], "tenant_not_found"],
                       [["keys", "revoke", "--tenant", "acme", "key-00000000"], "key_not_found"]):
        result = runner.invoke(main, [*args, "--registry", str(path)])
        assert result.exit_code == 2
        assert result.stderr.strip() == result.stderr.strip().splitlines()[0] and f"[{code}]" in result.stderr
        assert "Traceback" not in result.output
