"""Persistence: every change is validated and written atomically; concurrent changes serialize; a crash mid-write
leaves a registry that loads."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tenantserve.errors import RegistryError
from tenantserve.registry.schema import AdapterSpec, Registry, TenantSpec
from tenantserve.registry.watch import file_state
from tenantserve.sidecar.store import RegistryStore


def test_mutate_persists_and_bumps_generation(registry_file: Path) -> None:
    store = RegistryStore(registry_file)
    before = file_state(registry_file)
    asyncio.run(store.mutate(lambda r: r.tenants.append(TenantSpec(id="globex"))))
    assert [t.id for t in Registry.load(registry_file, check_paths=False).tenants] == ["acme", "globex"]
    assert store.generation == 1 and file_state(registry_file) != before


def test_invalid_change_is_refused_and_the_file_is_untouched(registry_file: Path) -> None:
    store = RegistryStore(registry_file)
    text = registry_file.read_text()

    def duplicate(r: Registry) -> None:
        r.tenants.append(TenantSpec(id="othercorp", adapters=[AdapterSpec(name="sql", path=Path("/x"))]))

    with pytest.raises(RegistryError, match="duplicate adapter name 'sql'"):
        asyncio.run(store.mutate(duplicate))
    assert registry_file.read_text() == text


def test_concurrent_changes_are_all_kept(registry_file: Path) -> None:
    store = RegistryStore(registry_file)

    async def many() -> None:
        await asyncio.gather(*(store.mutate(lambda r, i=i: r.tenants.append(TenantSpec(id=f"t{i}")))
                               for i in range(25)))

    asyncio.run(many())
    ids = {t.id for t in Registry.load(registry_file, check_paths=False).tenants}
    assert ids == {"acme", *(f"t{i}" for i in range(25))}


_WRITER = """
import asyncio, sys
from pathlib import Path
from tenantserve.registry.schema import AdapterSpec, TenantSpec
from tenantserve.sidecar.store import RegistryStore
store = RegistryStore(Path(sys.argv[1]))
async def main():
    i = 0
    while True:
        i += 1
        def change(r, i=i):
            r.tenants = [t for t in r.tenants if t.id == "acme"]
            r.tenants += [TenantSpec(id=f"t{i}-{k}", adapters=[AdapterSpec(name=f"a{i}-{k}", path=Path("/m/x"))])
                          for k in range(40)]
        await store.mutate(change)
        print(i, flush=True)
asyncio.run(main())
"""


def test_sidecar_killed_mid_write_leaves_a_valid_registry(registry_file: Path) -> None:
    """kill -9 a process that rewrites the registry in a loop, at random moments, 10 times; it must always load."""
    rng = random.Random(4)
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(registry_file)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.readline()  # it has written at least once: now kill it somewhere inside a later write
        time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        registry = Registry.load(registry_file, check_paths=False)
        assert registry.tenant("acme") is not None and len(registry.tenants) == 41
    leftovers = [p for p in registry_file.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) <= 10  # temp files of killed writers may remain; they are never the registry
