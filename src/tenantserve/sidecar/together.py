"""``tenantserve up``: the engine and its sidecar on one machine, started and stopped together.

The engine runs as a child process group (its log in a file); the sidecar runs in this process on uvicorn, whose
signal handling turns Ctrl-C/SIGTERM into a graceful shutdown. Whichever ends first ends the other: the engine is
stopped (SIGTERM, then SIGKILL) when the sidecar exits, and the sidecar exits when the engine dies.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tenantserve.engine.process import EngineProcess
from tenantserve.launcher import LaunchPlan
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.server import build_server


def run_together(plan: LaunchPlan, config: SidecarConfig, *, engine_url: str, host: str, port: int,
                 log_path: Path) -> int:
    """Run until Ctrl-C or until the engine exits; returns 0, or the engine's exit code if it died first."""
    server = build_server(config, host=host, port=port)
    engine = EngineProcess(plan, base_url=engine_url, log_path=log_path)
    engine.start()
    died: list[int | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            if not engine.running():
                died.append(engine.proc.returncode if engine.proc else None)
                server.should_exit = True
                return

    watcher = threading.Thread(target=watch, name="engine-watch", daemon=True)
    watcher.start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: the normal way to stop
        pass
    finally:
        done.set()
        engine.stop()
    if died:
        return died[0] or 3
    return 0
