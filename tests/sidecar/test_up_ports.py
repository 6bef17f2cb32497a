"""`tenantserve up` (and `launch`) refuse a port another program holds, before starting anything (exit 3, one line).

The "other program" is a recording HTTP server (tests/sidecar/squatter.py): it must not receive a single request,
let alone the admin token. No engine starts in these tests: the refusal comes first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tenantserve.demo.run import free_port
from tenantserve.engine.process import PortInUse, check_port_free
from tests.integration.engines import copy_registry
from tests.sidecar.squatter import Squatter

TOKEN = "up-ports-admin-token"


def test_check_port_free_names_a_taken_port_on_any_address() -> None:
    with Squatter() as squatter:
        for host in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(PortInUse) as info:
                check_port_free(host, squatter.port)
            assert str(squatter.port) in str(info.value) and info.value.exit_code == 3
    assert check_port_free("127.0.0.1", squatter.port) is None  # released: free again
    assert squatter.requests == []


def _up(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "TENANTSERVE_ADMIN_TOKEN": TOKEN, "TENANTSERVE_STATE_DIR": str(tmp_path / "state")}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tenantserve", "up", "--registry",
                          str(copy_registry(tmp_path / "adapters.yaml")), *args],
                         env=env, capture_output=True, text=True, timeout=300)
    return out, time.monotonic() - start


@pytest.mark.parametrize("which", ["--port", "--sidecar-port"])
def test_up_on_a_taken_port_exits_3_naming_it_and_sends_the_squatter_nothing(tmp_path: Path, which: str) -> None:
    with Squatter() as squatter:
        other = "--sidecar-port" if which == "--port" else "--port"
        out, took = _up(tmp_path, which, str(squatter.port), other, str(free_port()))
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "port_in_use" in lines[0] and str(squatter.port) in lines[0], out.stderr
    assert squatter.requests == [] and TOKEN not in str(squatter.requests)
    assert not (tmp_path / "state" / "engine.log").exists()  # no engine was started
    assert took < 60


def test_launch_on_a_taken_port_exits_3_naming_it(tmp_path: Path) -> None:
    with Squatter() as squatter:
        out = subprocess.run([sys.executable, "-m", "tenantserve", "launch", "--registry",
                              str(copy_registry(tmp_path / "adapters.yaml")), "--port", str(squatter.port)],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr
    assert [line for line in out.stderr.splitlines() if "port_in_use" in line and str(squatter.port) in line]
    assert "starting vLLM" not in out.stderr and squatter.requests == []
