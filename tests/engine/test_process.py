"""``EngineProcess.start_ready``: the one way to start an engine and wait for it (the demo, the replay, the test
fixtures); an engine that never becomes ready is stopped again, never left running. Stand-in engines: tiny Python
servers (the process handling is under test, not vLLM, whose start takes 40 s)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from tenantserve.demo.run import free_port
from tenantserve.engine.launch import LaunchPlan
from tenantserve.engine.process import EngineProcess
from tenantserve.errors import EngineError
from tenantserve.registry.knobs import ResolvedKnobs

SERVE_HEALTH = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _engine(tmp_path: Path, code: str, port: int) -> EngineProcess:
    plan = LaunchPlan(argv=[sys.executable, "-c", code, str(port)], env={}, knobs=ResolvedKnobs(1, 8, 1, False))
    return EngineProcess(plan, base_url=f"http://127.0.0.1:{port}", log_path=tmp_path / "engine.log")


def test_a_ready_engine_keeps_running(tmp_path: Path) -> None:
    port = free_port()
    engine = _engine(tmp_path, SERVE_HEALTH, port)
    try:
        took = engine.start_ready(60)
        assert 0 <= took < 60 and engine.running()
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        engine.stop()
    assert not engine.running()


def test_an_engine_that_dies_before_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    engine = _engine(tmp_path, "import sys; print('no GPU here'); sys.exit(7)", free_port())
    with pytest.raises(EngineError, match=r"exited with code 7 before it was ready[\s\S]*no GPU here"):
        engine.start_ready(60)
    assert not engine.running() and engine.proc is not None and engine.proc.returncode == 7
    assert engine.metrics_dir is not None and not engine.metrics_dir.exists()  # cleaned up by the stop


def test_an_engine_that_never_answers_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    engine = _engine(tmp_path, "import time; time.sleep(600)", free_port())
    start = time.monotonic()
    with pytest.raises(EngineError, match="not ready after 2 s"):
        engine.start_ready(2)
    assert time.monotonic() - start < 60
    assert not engine.running()  # not left behind


def test_an_interrupted_wait_stops_the_engine(tmp_path: Path) -> None:
    engine = _engine(tmp_path, "import time; time.sleep(600)", free_port())

    def interrupt(_elapsed: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.start_ready(60, tick=interrupt)
    assert not engine.running()
