"""One real vLLM engine WITH the tenant middleware, started once for the security tests.

Registry: the default one (absolute paths) with ``security.auth`` on; acme owns ``sql`` and may use the base,
globex owns ``pirate`` and may not, initech owns ``french`` with at most 1 request in flight. The engine binds
on loopback only; "remote" clients are simulated with ``X-Forwarded-For`` from a documentation address (RFC 5737),
which vLLM's uvicorn honours from a loopback peer (its ``proxy_headers`` default, as behind a same-host reverse
proxy): admin routes and /metrics must behave differently for them. No packet leaves loopback.
``TENANTSERVE_TEST_REGISTRY`` swaps the source registry (another model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tenantserve.registry.schema import Registry
from tests.integration.engines import RunningEngine, copy_secured_registry, start_engine
from tests.waiting import wait_for as wait_until  # noqa: F401 (the security tests import it from here)

ADMIN_TOKEN = "tsadmin-" + "integration-test-admin-token"
METRICS_TOKEN = "tsmetrics-" + "integration-test-metrics-token"


#: The one module whose sidecar may reconcile the shared engine down to its own registry (POST /admin/reconcile
#: unloads every adapter it does not know): it must run after every other test of this package.
LAST = "test_sidecar_fuzz.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move this package's ``LAST`` module behind the package's other tests, whatever the file names sort as."""
    here = Path(__file__).parent
    ours = [i for i, item in enumerate(items) if Path(item.fspath).parent == here]
    if not ours:
        return
    block = [items[i] for i in ours]
    reordered = [it for it in block if Path(it.fspath).name != LAST] + [it for it in block if Path(it.fspath).name == LAST]
    for i, item in zip(ours, reordered):
        items[i] = item


#: The address a simulated remote client claims (TEST-NET-2, never contacted).
REMOTE_CLIENT = "198.51.100.7"


@dataclass
class SecuredEngine:
    engine: RunningEngine
    keys: dict[str, str]  # tenant id -> a live key

    @property
    def url(self) -> str:
        return self.engine.url

    @property
    def registry_path(self) -> Path:
        return self.engine.registry_path

    def edit(self, change: Callable[[Registry], object]) -> object:
        """Change the registry file the running middleware watches (atomically, like the CLI and the sidecar)."""
        reg = Registry.load(self.registry_path, check_paths=False)
        result = change(reg)
        reg.save(self.registry_path)
        return result

    def client(self, key: str | None, *, remote: bool = False, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if remote:
            headers["X-Forwarded-For"] = REMOTE_CLIENT
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


#: The one origin the secured engine allows cross-origin requests from (vLLM's --allowed-origins).
BROWSER_ORIGIN = "https://app.example"


@pytest.fixture(scope="session")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredEngine]:
    tmp = tmp_path_factory.mktemp("secured")

    def adjust(reg: Registry) -> None:
        reg.tenant("globex").allow_base = False  # type: ignore[union-attr]
        reg.tenant("initech").max_in_flight = 1  # type: ignore[union-attr]
        reg.engine.extra_args = [*reg.engine.extra_args, "--allowed-origins", f'["{BROWSER_ORIGIN}"]',  # CORS on
                                 "--enable-prompt-tokens-details"]  # usage shows prefix-cache hits (cached_tokens)

    path, keys = copy_secured_registry(tmp / "adapters.yaml", adjust)
    prom_dir = tmp / "prometheus"
    prom_dir.mkdir()
    env = {"TENANTSERVE_ADMIN_TOKEN": ADMIN_TOKEN, "TENANTSERVE_METRICS_TOKEN": METRICS_TOKEN,
           "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
           "VLLM_SERVER_DEV_MODE": "1"}  # /pause and /resume (admin only, like every dev route) hold requests in flight
    running = start_engine(path, tmp / "engine.log", extra_env=env)
    try:
        yield SecuredEngine(running, keys)
    finally:
        running.stop()
