"""The reconciler's pure core: what to load, unload and replace so the engine matches the registry."""

from __future__ import annotations

from tenantserve.sidecar.reconciler import ReconcilePlan, diff


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
