"""``tenantserve up``: the engine and its sidecar on one machine, started and stopped together.

The engine runs as a child process group (its log in a file, the previous run's kept as ``<log>.1``); the sidecar
runs in this process on uvicorn, whose signal handling turns Ctrl-C/SIGTERM into a graceful shutdown. Whichever ends
first ends the other: the engine is stopped (SIGTERM, then SIGKILL) when the sidecar exits, and the sidecar exits when
the engine dies. Once both answer, one line says so (with the URLs and the seconds it took) and the run-state file
(``tenantserve.engine.runstate``) tells `tenantserve tenants|adapters ...` where they are; it is removed on exit.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tenantserve.engine.launch import LaunchPlan
from tenantserve.engine.process import EngineProcess
from tenantserve.engine.runstate import RunState, remove_state, write_state
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.server import build_server


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to ``host`` (a wildcard bind: loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def run_together(plan: LaunchPlan, config: SidecarConfig, *, engine_url: str, host: str, port: int,
                 log_path: Path, say: Callable[[str], None] | None = None) -> int:
    """Run until Ctrl-C or until the engine exits; returns 0, or the engine's exit code if it died first."""
    server = build_server(config, host=host, port=port)
    engine = EngineProcess(plan, base_url=engine_url, log_path=log_path)
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    sidecar_url = client_url(host, port)
    started = time.monotonic()
    engine.start()
    died: list[int | None] = []
    done = threading.Event()
    ready = False

    def watch() -> None:
        nonlocal ready
        while not done.wait(0.5):
            if not engine.running():
                died.append(engine.proc.returncode if engine.proc else None)
                server.should_exit = True
                return
            if not ready and server.started and _answers(f"{engine.base_url}/health"):
                ready = True
                write_state(config.registry_path, RunState(pid=os.getpid(), engine_url=engine.base_url,
                                                           sidecar_url=sidecar_url))
                say(f"tenantserve: ready: OpenAI API {engine.base_url}/v1, admin API {sidecar_url} (docs /docs) "
                    f"after {time.monotonic() - started:.0f} s")

    watcher = threading.Thread(target=watch, name="engine-watch", daemon=True)
    watcher.start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: the normal way to stop
        pass
    finally:
        done.set()
        watcher.join(5)
        remove_state(config.registry_path, os.getpid())
        engine.stop()
    if died:
        return died[0] or 3
    return 0
