"""Start real vLLM engines for tests, through the same launcher the operator uses.

``start_engine`` is shared by every integration fixture: it plans the launch from a registry file, starts the engine
on a free port with its log under the test's temp dir, and waits until ``/health`` answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

from tenantserve.demo.run import free_port
from tenantserve.engine.launch import plan_launch
from tenantserve.engine.process import EngineProcess
from tenantserve.registry.keys import issue_key
from tenantserve.registry.schema import Registry
from tests.conftest import DEFAULT_REGISTRY


@dataclass
class RunningEngine:
    url: str
    registry_path: Path
    process: EngineProcess

    @property
    def registry(self) -> Registry:
        return Registry.load(self.registry_path)

    def openai(self, api_key: str = "none", **kwargs: object) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def stop(self) -> None:
        self.process.stop()


def copy_registry(dest: Path, source: Path = DEFAULT_REGISTRY, **engine: object) -> Path:
    """Copy a registry with absolute paths (so it can live anywhere), optionally overriding engine knobs."""
    reg = Registry.load(source)
    reg.base.path = reg.base_path
    for _, adapter in reg.adapters():
        adapter.path = reg.adapter_path(adapter)
    for key, value in engine.items():
        setattr(reg.engine, key, value)
    reg.save(dest)
    return dest


def copy_secured_registry(dest: Path, adjust: Callable[[Registry], object] | None = None) -> tuple[Path, dict[str, str]]:
    """The test source registry (``TENANTSERVE_TEST_REGISTRY``, else the default) with tenant auth on, optionally
    adjusted, and one fresh key per tenant: returns the file and ``{tenant id: key}``."""
    path = copy_registry(dest, Path(os.environ.get("TENANTSERVE_TEST_REGISTRY", DEFAULT_REGISTRY)))
    reg = Registry.load(path, check_paths=False)
    reg.security.auth = True
    if adjust is not None:
        adjust(reg)
    keys = {t.id: issue_key(t) for t in reg.tenants}
    reg.save(path)
    return path, keys


def start_engine(registry_path: Path, log_path: Path, *, timeout: float = 420.0,
                 extra_env: dict[str, str] | None = None, **plan_kwargs: object) -> RunningEngine:
    port = free_port()
    plan = plan_launch(Registry.load(registry_path), port=port, **plan_kwargs)  # type: ignore[arg-type]
    proc = EngineProcess(plan, base_url=f"http://127.0.0.1:{port}", log_path=log_path, extra_env=extra_env)
    proc.start_ready(timeout)
    return RunningEngine(url=f"http://127.0.0.1:{port}", registry_path=registry_path, process=proc)
