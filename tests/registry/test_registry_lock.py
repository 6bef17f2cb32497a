"""Writers of one registry file in different processes (the sidecar, ``tenantserve keys``) never lose a change."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tenantserve.errors import RegistryError
from tenantserve.registry.schema import BaseSpec, Registry, RegistryLock, TenantSpec
from tenantserve.sidecar.errors import RegistryWriteError
from tenantserve.sidecar.store import RegistryStore


def _registry(path: Path) -> Path:
    Registry(base=BaseSpec(name="b", path=Path("b")), tenants=[TenantSpec(id="acme")]).save(path)
    return path


def _keys_create(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tenantserve", "keys", "create", "--tenant", "acme",
                             "--registry", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_keys_cli_waits_for_the_lock_then_writes(tmp_path: Path) -> None:
    path = _registry(tmp_path / "r.yaml")
    with RegistryLock(path):
        proc = _keys_create(path)
        time.sleep(3.0)  # the CLI starts in ~1 s, then must wait here
        assert proc.poll() is None, proc.communicate()
        assert Registry.load(path, check_paths=False).tenants[0].api_keys == []
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(Registry.load(path, check_paths=False).tenants[0].api_keys) == 1


def test_a_lock_held_too_long_is_a_clear_error(tmp_path: Path) -> None:
    path = _registry(tmp_path / "r.yaml")
    with RegistryLock(path), pytest.raises(RegistryError) as info:
        RegistryLock(path, timeout=0.2).acquire()  # a second open file: flock conflicts even in one process
    assert info.value.code == "registry_locked" and ".r.yaml.lock" in str(info.value)
    with RegistryLock(path, timeout=0.2):  # released by the with-block: free again
        pass


def test_the_sidecar_store_reports_a_held_lock_as_a_write_error(tmp_path: Path, monkeypatch) -> None:
    path = _registry(tmp_path / "r.yaml")
    store = RegistryStore(path)
    monkeypatch.setattr(RegistryLock, "__init__", _short_timeout)
    with RegistryLock(path), pytest.raises(RegistryWriteError) as info:
        asyncio.run(store.mutate(lambda reg: reg.tenants.append(TenantSpec(id="globex"))))
    assert info.value.http_status == 503 and info.value.code == "registry_locked" and "lock" in str(info.value)
    assert [t.id for t in Registry.load(path, check_paths=False).tenants] == ["acme"]


_original_init = RegistryLock.__init__


def _short_timeout(self: RegistryLock, path: Path | str, timeout: float = 30.0) -> None:
    _original_init(self, path, timeout=0.3)


def test_concurrent_cli_and_sidecar_writers_lose_nothing(tmp_path: Path) -> None:
    path = _registry(tmp_path / "r.yaml")
    store = RegistryStore(path)
    procs = [_keys_create(path) for _ in range(6)]

    async def onboard() -> None:
        for i in range(6):
            await store.mutate(lambda reg, i=i: reg.tenants.append(TenantSpec(id=f"t{i}")))
            await asyncio.sleep(0.2)

    asyncio.run(onboard())
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    reg = Registry.load(path, check_paths=False)
    assert [t.id for t in reg.tenants] == ["acme"] + [f"t{i}" for i in range(6)]
    assert len(reg.tenants[0].api_keys) == 6
