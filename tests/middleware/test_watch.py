"""Registry changes reach the middleware without a restart; a broken registry never opens the doors."""

from __future__ import annotations

from tenantserve.middleware.errors import RegistryUnavailable
from tenantserve.middleware.watch import RegistryWatcher
from tenantserve.registry.keys import issue_key, list_keys, revoke_key
from tenantserve.registry.schema import AdapterSpec
from tests.middleware.conftest import ENV, World, bearer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_new_key_revocation_and_grant_apply_after_the_interval(world: World) -> None:
    clock = Clock()
    watcher = RegistryWatcher(world.path, environ=ENV, interval=1.0, clock=clock)
    acme = world.registry.tenant("acme")
    assert watcher.current().allowed_models("acme") == {"demo-base", "sql"}
    new_key = issue_key(acme)
    revoke_key(acme, list_keys(acme)[0].id)
    acme.adapters.append(AdapterSpec(name="sql-v2", path=world.path.parent / "x"))
    world.save()
    assert watcher.current().allowed_models("acme") == {"demo-base", "sql"}  # not yet checked again
    clock.now = 1.0
    view = watcher.current()
    assert view.allowed_models("acme") == {"demo-base", "sql", "sql-v2"}
    assert view.keys.get(__import__("hashlib").sha256(new_key.encode()).digest()) == "acme"
    assert watcher.reloads == 2


def test_invalid_registry_keeps_the_last_good_view(world: World) -> None:
    clock = Clock()
    watcher = RegistryWatcher(world.path, environ=ENV, interval=1.0, clock=clock)
    good = watcher.current()
    world.path.write_text("base: [this is not: a registry")
    clock.now = 5.0
    assert watcher.current() is good
    world.path.unlink()
    clock.now = 10.0
    assert watcher.current() is good


def test_no_registry_at_start_fails_closed(tmp_path) -> None:
    watcher = RegistryWatcher(tmp_path / "missing.yaml", environ=ENV)
    try:
        watcher.current()
    except RegistryUnavailable as exc:
        assert exc.http_status == 503
    else:
        raise AssertionError("expected RegistryUnavailable")


def test_revoked_key_refused_within_the_interval_through_http(world: World) -> None:
    c = world.make(reload_interval=0.0)
    key = world.keys["acme"]
    assert c.post("/v1/completions", json={"model": "sql"}, headers=bearer(key)).status_code == 200
    acme = world.registry.tenant("acme")
    revoke_key(acme, list_keys(acme)[0].id)
    world.save()
    resp = c.post("/v1/completions", json={"model": "sql"}, headers=bearer(key))
    assert resp.status_code == 401
    assert world.metrics.get_sample_value("tenantserve_auth_failures_total", {"reason": "revoked_key"}) == 1


class CountingStat:
    """``os.stat`` with a call counter (the real file is still stat'ed)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        import os

        return os.stat(path)


def test_the_file_is_stated_on_every_request_and_reloaded_only_when_it_changed(world: World) -> None:
    """The default: no interval. A registry written (atomically) before the sidecar's 201 is in force for the very
    next request, at the same clock instant."""
    clock, stat = Clock(), CountingStat()
    watcher = RegistryWatcher(world.path, environ=ENV, clock=clock, stat=stat)
    for _ in range(5):
        watcher.current()
    assert stat.calls == 5 and watcher.reloads == 1  # stat'ed each time, read once
    world.registry.tenant("acme").adapters.append(AdapterSpec(name="sql-v2", path=world.path.parent / "x"))
    world.save()
    assert "sql-v2" in watcher.current().allowed_models("acme")  # same instant: clock.now never moved
    assert stat.calls == 6 and watcher.reloads == 2
