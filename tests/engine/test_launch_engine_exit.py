"""The engine dying on its own is exit 3 with one line (README: 3 = the engine failed); a stop that was asked for
(a forwarded Ctrl-C / SIGTERM) is a clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tenantserve.engine.launch import LaunchPlan, run_foreground
from tenantserve.registry.knobs import ResolvedKnobs
from tenantserve.errors import EngineError
from tests.lora_corpus import make_adapter, make_base


def _plan(code: str) -> LaunchPlan:
    return LaunchPlan(argv=[sys.executable, "-c", code], env={}, knobs=ResolvedKnobs(1, 8, 1, False))


def test_a_clean_exit_is_0() -> None:
    assert run_foreground(_plan("raise SystemExit(0)")) == 0


@pytest.mark.parametrize(("code", "how"), [("raise SystemExit(1)", "exited with code 1"),
                                           ("import os; os.kill(os.getpid(), 9)", "was killed by signal 9")])
def test_an_engine_dying_on_its_own_is_an_engine_error(code: str, how: str) -> None:
    with pytest.raises(EngineError) as info:
        run_foreground(_plan(code))
    assert info.value.exit_code == 3 and info.value.code == "engine_exited"
    assert f"the vLLM engine {how} without being asked to stop" in str(info.value)


def test_a_forwarded_sigterm_is_a_clean_stop(tmp_path: Path) -> None:
    """The child signals readiness with a file; only then does the test SIGTERM itself (run_foreground forwards it).
    The child dies of the signal (-15), which is the stop that was asked for: 0."""
    ready = tmp_path / "ready"
    code = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(120)"

    def stop() -> None:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop, daemon=True).start()
    started = time.monotonic()
    assert run_foreground(_plan(code)) == 0
    assert ready.exists() and time.monotonic() - started < 100


def test_cli_launch_exits_3_with_one_line_when_vllm_dies_at_start(tmp_path: Path) -> None:
    """A real vLLM that cannot start (an argument it does not know): its own message, then our one line, exit 3."""
    make_base(tmp_path / "base")
    make_adapter(tmp_path / "adapters" / "sql")
    (tmp_path / "adapters.yaml").write_text(
        "base: {name: b, path: base}\nsecurity: {auth: false}\nengine: {extra_args: [--no-such-vllm-flag]}\n"
        "tenants: [{id: a, adapters: [{name: sql, path: adapters/sql, allow_unverified_base: true}]}]\n")
    res = subprocess.run([sys.executable, "-m", "tenantserve", "launch", "--registry", "adapters.yaml",
                          "--port", "18999"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 3, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last == ("tenantserve: error [engine_exited]: the vLLM engine exited with code 2 without being asked to "
                    "stop (its log is above)")
    assert "--no-such-vllm-flag" in res.stderr and "Traceback" not in res.stderr
