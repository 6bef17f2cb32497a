"""Waiting in tests: poll a condition with a deadline, and stop a child process the way an operator would."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float, what: str = "the condition", tick: float = 0.1) -> float:
    """Seconds until ``condition()`` held, polled every ``tick`` s.

    Raises:
        AssertionError: naming ``what``, when it did not hold within ``timeout`` s.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(tick)
    return time.monotonic() - start


def interrupt(proc: subprocess.Popen, timeout: float) -> int:
    """Ctrl-C a still-running ``proc`` (SIGINT, like an operator) and reap it; killed after ``timeout`` s.

    Returns its exit code (negative: the signal that ended it).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
