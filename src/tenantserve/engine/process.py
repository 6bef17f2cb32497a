"""A vLLM engine as a child process: start it (a fresh log per start), wait until it answers, stop it (or kill it,
for tests)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tenantserve.engine.launch import LaunchPlan
from tenantserve.errors import EngineError
from tenantserve.vllm_plugin.metrics import MULTIPROC_ENV, make_multiproc_dir


class PortInUse(EngineError):
    """Another program holds the port the engine (or sidecar) is to listen on."""

    code = "port_in_use"


def check_port_free(host: str, port: int, *, what: str = "the engine") -> None:
    """Raise ``PortInUse`` naming the port if a program listens on it: on ``host`` (a test bind, released at once)
    or on loopback (a connect), since the sidecar reaches the engine through 127.0.0.1 whatever ``host`` is."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is already in use by another program; {what} cannot "
                                f"listen there (pick another port or stop that program)") from None
            raise EngineError(f"cannot bind {host}:{port} for {what}: {exc.strerror or exc}") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise PortInUse(f"port {port} on 127.0.0.1 is already in use by another program; {what} cannot "
                            f"listen there (pick another port or stop that program)")


def rotate_log(path: Path) -> None:
    """Keep one previous log: ``path`` becomes ``path.1`` (replacing an older one); nothing to do if it is absent."""
    try:
        if path.stat().st_size > 0:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


class EngineProcess:
    """One engine in its own process group, logging to a file. Cheap to construct; ``start`` does the work."""

    def __init__(self, plan: LaunchPlan, *, base_url: str, log_path: Path, extra_env: dict[str, str] | None = None):
        self.plan = plan
        self.base_url = base_url.rstrip("/")
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_dir: Path | None = None

    def start(self) -> None:
        """Start the engine; its log is a fresh file (the previous start's is kept as ``<log>.1``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(self.log_path)
        log = self.log_path.open("ab")
        env = {**os.environ, **self.plan.env, **self.extra_env}
        if self.metrics_dir is not None:  # left by a killed run
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir = make_multiproc_dir(env)  # fresh per start: a restart must not add old counts
        env[MULTIPROC_ENV] = str(self.metrics_dir)
        try:
            self.proc = subprocess.Popen(
                self.plan.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def start_ready(self, timeout: float = 300.0, *, tick: Callable[[float], None] | None = None) -> float:
        """``start``, then ``wait_ready``; an engine that never becomes ready (it dies, ``timeout`` s pass, or the
        wait is interrupted) is stopped again before the error propagates. Returns the seconds it took to answer.
        Raises ``EngineError`` (the log's last lines in the message)."""
        self.start()
        try:
            return self.wait_ready(timeout, tick=tick)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 300.0, *, tick: Callable[[float], None] | None = None) -> float:
        """Poll ``/health`` until the engine answers 200; return the seconds it took. Fails fast if it dies."""
        start = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while True:
                elapsed = time.monotonic() - start
                if not self.running():
                    code = self.proc.returncode if self.proc else None
                    raise EngineError(f"vLLM exited with code {code} before it was ready; last log lines:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return elapsed
                except httpx.HTTPError:
                    pass
                if elapsed > timeout:
                    self.stop()
                    raise EngineError(f"vLLM was not ready after {timeout:.0f} s; last log lines:\n{self.log_tail()}")
                if tick:
                    tick(elapsed)
                time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the whole process group (API server, EngineCore, workers); SIGKILL whatever is left after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        self._signal_group(signal.SIGKILL)  # stragglers of the group, if any
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.proc.returncode

    def kill(self) -> None:
        """``kill -9`` the engine and its children: a crash, for tests of recovery."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> EngineProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
