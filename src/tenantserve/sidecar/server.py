"""Run the sidecar on uvicorn: check the configuration and the registry first, so bad input fails in one line."""

from __future__ import annotations

import uvicorn

from tenantserve.registry.schema import Registry
from tenantserve.sidecar.app import create_app
from tenantserve.sidecar.config import SidecarConfig


def build_server(config: SidecarConfig, *, host: str, port: int, log_level: str = "info") -> uvicorn.Server:
    Registry.load(config.registry_path, check_paths=False)  # raises RegistryError before anything binds
    app = create_app(config)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))


def run(config: SidecarConfig, *, host: str, port: int, log_level: str = "info") -> int:
    server = build_server(config, host=host, port=port, log_level=log_level)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        return 0
    return 0 if server.started else 1
