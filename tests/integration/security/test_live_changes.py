"""Registry edits reach the running middleware within 2 s, without restarting vLLM."""

from __future__ import annotations

from tenantserve.registry.keys import issue_key, list_keys, revoke_key
from tenantserve.registry.schema import Registry
from tests.integration.security.conftest import SecuredEngine, wait_until


def _status(secured: SecuredEngine, key: str, model: str = "sql") -> int:
    with secured.client(key) as c:
        return c.post("/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 1}).status_code


def test_new_key_works_and_revoked_key_stops_within_2s(secured: SecuredEngine) -> None:
    fresh = secured.edit(lambda r: issue_key(r.tenant("acme")))
    assert wait_until(lambda: _status(secured, fresh) == 200, timeout=2.0) <= 2.0

    def revoke(reg: Registry) -> None:
        acme = reg.tenant("acme")
        revoke_key(acme, list_keys(acme)[-1].id)

    secured.edit(revoke)
    assert wait_until(lambda: _status(secured, fresh) == 401, timeout=2.0) <= 2.0
    assert _status(secured, secured.keys["acme"]) == 200  # the tenant's other key is untouched


def test_granting_the_base_applies_within_2s(secured: SecuredEngine) -> None:
    assert _status(secured, secured.keys["globex"], "demo-base") == 404

    def allow(value: bool):
        def change(reg: Registry) -> None:
            reg.tenant("globex").allow_base = value
        return change

    try:
        secured.edit(allow(True))
        wait_until(lambda: _status(secured, secured.keys["globex"], "demo-base") == 200, timeout=2.0)
    finally:
        secured.edit(allow(False))
    wait_until(lambda: _status(secured, secured.keys["globex"], "demo-base") == 404, timeout=2.0)


def test_a_broken_registry_edit_keeps_the_last_good_one(secured: SecuredEngine) -> None:
    good = secured.registry_path.read_text()
    try:
        secured.registry_path.write_text(good + "\nnot_a_key: [\n")
        import time
        time.sleep(1.5)
        assert _status(secured, secured.keys["acme"]) == 200
        assert _status(secured, "tsk-wrong") == 401
    finally:
        secured.registry_path.write_text(good)


def test_the_keys_cli_reaches_the_running_engine_within_2s(secured: SecuredEngine) -> None:
    from click.testing import CliRunner

    from tenantserve.cli import main

    args = ["--tenant", "initech", "--registry", str(secured.registry_path)]
    created = CliRunner().invoke(main, ["keys", "create", *args])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    wait_until(lambda: _status(secured, key, "french") == 200, timeout=2.0)
    key_id = CliRunner().invoke(main, ["keys", "list", *args]).stdout.splitlines()[-1].split()[0]
    assert CliRunner().invoke(main, ["keys", "revoke", *args, key_id]).exit_code == 0
    wait_until(lambda: _status(secured, key, "french") == 401, timeout=2.0)
