"""Sidecar unit fixtures: a registry on disk with config-only adapters, and a real sidecar whose engine is absent.

The engine URL points at a closed port: every admin path that is refused before the engine is contacted (auth,
validation, admission, duplicates, unknown names, persistence) is tested here; the rest runs against real vLLM in
tests/integration/test_sidecar*.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tenantserve.demo.run import free_port
from tests.sidecar.serving import SidecarThread


@pytest.fixture
def registry_file(write_registry: Callable[[dict | str], Path], make_adapter: Callable[..., Path]) -> Path:
    sql = make_adapter("sql")
    return write_registry({
        "version": 1,
        "base": {"name": "demo-base", "path": "base"},
        "engine": {"max_loras": 2, "max_lora_rank": 8},
        "tenants": [{"id": "acme", "adapters": [{"name": "sql", "path": str(sql)}]}],
        "security": {"auth": False},
    })


@pytest.fixture
def sidecar(registry_file: Path) -> Iterator[SidecarThread]:
    with SidecarThread(registry_file, f"http://127.0.0.1:{free_port()}", reconcile=False) as running:
        yield running
