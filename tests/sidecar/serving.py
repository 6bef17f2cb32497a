"""Run a real sidecar (uvicorn, real HTTP) in a background thread of the test process, on a free port."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from tenantserve.demo.run import free_port
from tenantserve.sidecar.app import create_app
from tenantserve.sidecar.config import SidecarConfig

TOKEN = "test-admin-token"


class SidecarThread:
    def __init__(self, registry_path: Path, engine_url: str, *, reconcile: bool = True, **config: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics = CollectorRegistry()
        values: dict = {"admin_token": TOKEN, "reconcile_interval": 2.0, "backoff_initial": 0.5,
                        "backoff_max": 2.0, "drain_timeout": 20.0,
                        "adapters_root": registry_path.parent / "adapters", **config}
        self.config = SidecarConfig(registry_path=registry_path, engine_url=engine_url, **values)
        self.app = create_app(self.config, metrics_registry=self.metrics, reconcile=reconcile)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> SidecarThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("sidecar did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, token: str | None = TOKEN, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.get_sample_value(name, labels) or 0.0

    def __enter__(self) -> SidecarThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
