"""One registry change watcher: a change is seen (however it is written), a broken version never replaces the last
good one, and a fix is picked up. The middleware's use of it: changes reach it without a restart, and a broken
registry never opens the doors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from tenantserve.errors import RegistryError
from tenantserve.middleware import TenantMiddleware
from tenantserve.middleware.policy import AccessView
from tenantserve.registry.keys import issue_key, list_keys, revoke_key
from tenantserve.registry.schema import AdapterSpec, Registry, atomic_write_text
from tenantserve.registry.watch import FileState, FileWatch, RegistryWatcher, file_state
from tests.middleware.conftest import ENV, LOOPBACK, World, bearer, fake_vllm
from tests.middleware.conftest import world as world  # noqa: F401  (the fixture, shared with the middleware tests)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingStat:
    """``os.stat`` with a call counter (the real file is still stat'ed)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> os.stat_result:
        self.calls += 1
        return os.stat(path)


def access_view(path: Path) -> AccessView:
    """What the middleware builds from the file (``asgi._access_view``)."""
    return AccessView.build(Registry.load(path, check_paths=False), ENV)


def names(path: Path) -> frozenset[str]:
    return frozenset(a.name for _, a in Registry.load(path, check_paths=False).adapters())


# -- the watcher, on real registry files ---------------------------------------------------------------------------


def test_a_same_second_rewrite_of_the_same_size_is_seen(world: World) -> None:
    """In place (same inode), same size, 1 ns later: a float-second mtime would call it unchanged."""
    ns = 1_700_000_000 * 10**9
    os.utime(world.path, ns=(ns, ns))
    watcher = RegistryWatcher(world.path, names)
    assert watcher.refresh() and watcher.value == {"sql", "pirate", "french"}
    before = file_state(world.path)
    text = world.path.read_text()
    assert "name: french" in text
    with open(world.path, "r+", encoding="utf-8") as fh:  # the same inode
        fh.write(text.replace("name: french", "name: frenck"))
    os.utime(world.path, ns=(ns + 1, ns + 1))
    after = file_state(world.path)
    assert before is not None and after is not None
    assert (after.inode, after.size) == (before.inode, before.size) and after != before
    assert os.stat(world.path).st_mtime == float(ns // 10**9)  # the float cannot tell them apart
    assert watcher.refresh() and watcher.value == {"sql", "pirate", "frenck"}


def test_an_atomic_rename_is_seen_even_with_the_same_size_and_mtime(world: World) -> None:
    """A new inode is a new version (Registry.save, a ConfigMap swap), whatever its size and mtime say."""
    watcher = RegistryWatcher(world.path, names)
    watcher.refresh()
    st = os.stat(world.path)
    atomic_write_text(world.path, world.path.read_text().replace("name: french", "name: frenck"))
    os.utime(world.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(world.path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns) and after.st_ino != st.st_ino
    assert watcher.refresh() and watcher.value == {"sql", "pirate", "frenck"}


def test_a_broken_rewrite_keeps_the_last_good_registry_and_a_fix_is_picked_up(world: World) -> None:
    errors: list[Exception] = []
    watcher = RegistryWatcher(world.path, names, on_error=errors.append)
    watcher.refresh()
    good = watcher.value
    assert good == {"sql", "pirate", "french"} and watcher.error is None
    world.path.write_text("base: [this is not: a registry")
    assert watcher.refresh() and watcher.value is good
    assert isinstance(watcher.error, RegistryError) and errors == [watcher.error]
    assert not watcher.refresh() and len(errors) == 1  # the same broken version is not retried nor reported again
    world.registry.tenant("acme").adapters.append(AdapterSpec(name="sql-v2", path=world.path.parent / "x"))
    world.save()
    assert watcher.refresh() and watcher.value == {"sql", "sql-v2", "pirate", "french"}
    assert watcher.error is None and watcher.reloads == 2


def test_a_missing_file_keeps_the_last_good_registry_until_it_comes_back(world: World) -> None:
    errors: list[Exception] = []
    watcher = RegistryWatcher(world.path, names, on_error=errors.append)
    watcher.refresh()
    text = world.path.read_text()
    world.path.unlink()
    assert watcher.refresh() and watcher.value == {"sql", "pirate", "french"}
    assert isinstance(watcher.error, RegistryError) and "not found" in str(watcher.error) and len(errors) == 1
    world.path.write_text(text.replace("name: french", "name: frenck"))
    assert watcher.refresh() and watcher.value == {"sql", "pirate", "frenck"} and watcher.error is None


def test_errors_outside_the_declared_ones_propagate(tmp_path: Path) -> None:
    """A bug in a caller's ``load`` is not a broken registry: it is not swallowed."""
    path = tmp_path / "adapters.yaml"
    path.write_text("x")

    def load(p: Path) -> None:
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        RegistryWatcher(path, load).refresh()
    kept: RegistryWatcher[None] = RegistryWatcher(path, load, errors=(Exception,))
    assert kept.refresh() and kept.value is None and isinstance(kept.error, ZeroDivisionError)


def test_file_watch_says_changed_once_per_version(tmp_path: Path) -> None:
    path = tmp_path / "adapters.yaml"
    watch = FileWatch(path)
    assert watch.changed() and watch.state is None  # first poll: no file yet
    assert not watch.changed()
    path.write_text("a")
    assert watch.changed() and isinstance(watch.state, FileState)
    assert not watch.changed()
    atomic_write_text(path, "a")
    assert watch.changed()
    path.unlink()
    assert watch.changed() and watch.state is None


# -- the middleware's watcher: its view follows the file ---------------------------------------------------------


def test_new_key_revocation_and_grant_apply_after_the_interval(world: World) -> None:
    clock = Clock()
    watcher = RegistryWatcher(world.path, access_view, interval=1.0, clock=clock)
    acme = world.registry.tenant("acme")
    assert watcher.current().allowed_models("acme") == {"demo-base", "sql"}  # type: ignore[union-attr]
    new_key = issue_key(acme)
    revoke_key(acme, list_keys(acme)[0].id)
    acme.adapters.append(AdapterSpec(name="sql-v2", path=world.path.parent / "x"))
    world.save()
    # not yet checked again
    assert watcher.current().allowed_models("acme") == {"demo-base", "sql"}  # type: ignore[union-attr]
    clock.now = 1.0
    view = watcher.current()
    assert view is not None
    assert view.allowed_models("acme") == {"demo-base", "sql", "sql-v2"}
    assert view.keys.get(hashlib.sha256(new_key.encode()).digest()) == "acme"
    assert watcher.reloads == 2


def test_invalid_registry_keeps_the_last_good_view(world: World) -> None:
    clock = Clock()
    watcher = RegistryWatcher(world.path, access_view, interval=1.0, clock=clock)
    good = watcher.current()
    assert good is not None
    world.path.write_text("base: [this is not: a registry")
    clock.now = 5.0
    assert watcher.current() is good
    world.path.unlink()
    clock.now = 10.0
    assert watcher.current() is good


def test_no_registry_at_start_fails_closed(tmp_path: Path) -> None:
    """Through the middleware: no version ever loaded, so every tenant route is refused, in the middleware's shape."""
    mw = TenantMiddleware(fake_vllm(), registry_path=tmp_path / "missing.yaml", environ=ENV,
                          metrics_registry=CollectorRegistry())
    assert RegistryWatcher(tmp_path / "missing.yaml", access_view).current() is None
    with TestClient(mw, client=LOOPBACK) as c:
        resp = c.post("/v1/completions", json={"model": "sql"}, headers=bearer("sk-anything"))
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "registry_unavailable"


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


def test_a_broken_registry_keeps_serving_the_last_good_one_through_http(world: World) -> None:
    c = world.make(reload_interval=0.0)
    key = world.keys["acme"]
    assert c.post("/v1/completions", json={"model": "sql"}, headers=bearer(key)).status_code == 200
    world.path.write_text("base: [this is not: a registry")
    assert c.post("/v1/completions", json={"model": "sql"}, headers=bearer(key)).status_code == 200
    assert c.post("/v1/completions", json={"model": "pirate"}, headers=bearer(key)).status_code == 404


def test_the_file_is_stated_on_every_request_and_reloaded_only_when_it_changed(world: World) -> None:
    """The default: no interval. A registry written (atomically) before the sidecar's 201 is in force for the very
    next request, at the same clock instant."""
    clock, stat = Clock(), CountingStat()
    watcher = RegistryWatcher(world.path, access_view, clock=clock, stat=stat)
    for _ in range(5):
        watcher.current()
    assert stat.calls == 5 and watcher.reloads == 1  # stat'ed each time, read once
    world.registry.tenant("acme").adapters.append(AdapterSpec(name="sql-v2", path=world.path.parent / "x"))
    world.save()
    # same instant: clock.now never moved
    assert "sql-v2" in watcher.current().allowed_models("acme")  # type: ignore[union-attr]
    assert stat.calls == 6 and watcher.reloads == 2
