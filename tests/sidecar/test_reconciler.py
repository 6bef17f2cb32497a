"""The reconciler's pure core: what to load, unload and replace so the engine matches the registry; and its file
watch, which asks for a pass when the registry changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from tenantserve.registry.schema import atomic_write_text
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.reconciler import ReconcilePlan, Reconciler, diff
from tenantserve.sidecar.store import RegistryStore


def test_nothing_to_do_when_converged() -> None:
    assert diff({"a": "/p/a", "b": "/p/b"}, {"b": "/p/b", "a": "/p/a"}).empty


def test_engine_restart_loads_everything_registered() -> None:
    assert diff({"b": "/p/b", "a": "/p/a"}, {}) == ReconcilePlan(load=("a", "b"))


def test_unregistered_adapters_are_unloaded() -> None:
    assert diff({"a": "/p/a"}, {"a": "/p/a", "stray": "/x"}) == ReconcilePlan(unload=("stray",))


def test_moved_adapter_is_replaced_not_left_on_the_old_path() -> None:
    plan = diff({"a": "/p/a2"}, {"a": "/p/a"})
    assert plan == ReconcilePlan(replace=("a",)) and not plan.empty


def test_mixed_plan() -> None:
    plan = diff({"keep": "/k", "new@v2": "/n2", "moved": "/m2"}, {"keep": "/k", "old@v1": "/o", "moved": "/m"})
    assert plan == ReconcilePlan(load=("new@v2",), unload=("old@v1",), replace=("moved",))


async def _woken(reconciler: Reconciler, timeout: float = 10.0) -> bool:
    """Whether the reconciler's file watch asked for a pass within ``timeout`` seconds (then clears the request)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reconciler._wake.wait(), timeout)
    woken = reconciler._wake.is_set()
    reconciler._wake.clear()
    return woken


def test_the_file_watch_asks_for_a_pass_on_every_kind_of_rewrite(registry_file: Path) -> None:
    """Through ``registry.watch``: an in-place rewrite of the same size within the same second (1 ns later), an
    atomic rename keeping size and mtime (a new inode), a broken edit (the pass then reports ``registry_invalid``);
    an untouched file asks for nothing. Only the watch loop runs here (no engine is needed for it)."""
    ns = 1_700_000_000 * 10**9
    os.utime(registry_file, ns=(ns, ns))
    config = SidecarConfig(registry_file, "http://127.0.0.1:9", None, insecure=True, watch_interval=0.01)
    store = RegistryStore(registry_file)
    reconciler = Reconciler(store, None, None, None, config, admit=None)  # type: ignore[arg-type]
    text = registry_file.read_text()

    async def scenario() -> list[bool]:
        task = asyncio.create_task(reconciler._watch_file())
        try:
            seen = [await _woken(reconciler, timeout=0.3)]  # untouched: no pass asked for
            with open(registry_file, "r+", encoding="utf-8") as fh:
                fh.write(text.replace("acme", "acne"))
            os.utime(registry_file, ns=(ns + 1, ns + 1))
            seen.append(await _woken(reconciler))
            st = os.stat(registry_file)
            atomic_write_text(registry_file, text)
            os.utime(registry_file, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert (os.stat(registry_file).st_size, os.stat(registry_file).st_mtime_ns) == (st.st_size,
                                                                                            st.st_mtime_ns)
            seen.append(await _woken(reconciler))
            registry_file.write_text("base: [broken")
            seen.append(await _woken(reconciler))
            return seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert asyncio.run(scenario()) == [False, True, True, True]
