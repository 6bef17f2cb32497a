"""`tenantserve up`: engine + sidecar started together; a ready line and a state file once both answer (the CLI
needs no --url); an operator onboards with one command; Ctrl-C stops both and removes the state file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tenantserve.admission.fingerprint import fingerprint
from tenantserve.demo import embedded
from tenantserve.demo.run import free_port
from tenantserve.engine.runstate import read_state, state_path
from tenantserve.registry.schema import Registry
from tests.conftest import EMBEDDED
from tests.integration.engines import copy_registry
from tests.waiting import interrupt

TOKEN = "up-admin-token"


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_serves_onboards_with_one_command_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    registry = copy_registry(tmp_path / "adapters.yaml")
    port, sidecar_port = free_port(), free_port()
    env = {**os.environ, "TENANTSERVE_ADMIN_TOKEN": TOKEN, "TENANTSERVE_STATE_DIR": str(tmp_path / "state")}
    cli = [sys.executable, "-m", "tenantserve"]
    proc = subprocess.Popen([*cli, "up", "--registry", str(registry), "--port", str(port),
                             "--sidecar-port", str(sidecar_port), "--adapters-root", str(tmp_path / "tenants")], env=env, stdout=(tmp_path / "up.log").open("wb"),
                            stderr=subprocess.STDOUT)
    engine, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sidecar_port}"
    try:
        deadline = time.monotonic() + 420
        while not (_up(f"{engine}/health") and _up(f"{admin}/healthz")):
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "tenantserve up did not come up"
            time.sleep(0.5)
        shutil.copytree(EMBEDDED / "adapters" / "sql", tmp_path / "tenants" / "initech" / "sql")
        base_fp = fingerprint(Registry.load(registry).base_path).value
        add = subprocess.run([*cli, "adapters", "add", "--url", admin, "initech", "initech-sql", "sql",  # relative
                              "--base-fingerprint", base_fp],
                             env=env, capture_output=True, text=True, timeout=300)
        assert add.returncode == 0, add.stderr
        assert "initech-sql (tenant initech): loaded" in add.stdout
        state = read_state(registry)  # written once both answered: the CLI finds them with no --url
        assert state is not None and (state.pid, state.engine_url, state.sidecar_url) == (proc.pid, engine, admin)
        listed = subprocess.run([*cli, "adapters", "list"], env={**env, "TENANTSERVE_REGISTRY": str(registry)},
                                capture_output=True, text=True)
        assert listed.returncode == 0 and "initech-sql" in listed.stdout and "loaded" in listed.stdout
        resp = httpx.post(f"{engine}/v1/completions", json={"model": "initech-sql", "prompt": embedded.SQL_PROMPT,
                                                            "max_tokens": 24, "temperature": 0}, timeout=60)
        assert resp.json()["choices"][0]["text"].strip() == embedded.SQL_ON_SQL
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
        assert not _up(f"{engine}/health") and not _up(f"{admin}/healthz")
        assert not state_path(registry).exists()  # removed on exit
        out = (tmp_path / "up.log").read_text()
        assert f"tenantserve: ready: OpenAI API {engine}/v1, admin API {admin} (docs /docs) after " in out
        log = tmp_path / "state" / f"engine-{port}.log"  # one log per port, named in the output
        assert str(log) in out and "POST /v1/completions" in log.read_text()  # real requests still logged
        assert "GET /health " not in log.read_text()  # the sidecar polls it every few seconds: not logged
    finally:
        interrupt(proc, 90)  # a failed assertion: still stop the engine through `up` itself
