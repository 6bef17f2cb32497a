"""Where `tenantserve up` is listening, so the operator CLI finds it without flags.

`up` writes ``.<registry file name>.up.json`` beside the registry it serves (the engine and sidecar URLs and its
pid) and removes it when it stops; `tenantserve tenants|adapters ...` read it for the same registry. A file left by a
process that is gone (killed -9) is ignored. It holds no secret: the admin token stays in the environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tenantserve.registry.schema import atomic_write_text


@dataclass(frozen=True)
class RunState:
    """What one `tenantserve up` serves: URLs as a client on this machine reaches them."""

    pid: int
    engine_url: str
    sidecar_url: str


def state_path(registry_path: Path) -> Path:
    """The state file for a registry: beside it, hidden, named after it."""
    registry_path = Path(registry_path)
    return registry_path.parent / f".{registry_path.name}.up.json"


def write_state(registry_path: Path, state: RunState) -> Path:
    path = state_path(registry_path)
    atomic_write_text(path, json.dumps(asdict(state), indent=2) + "\n")
    return path


def remove_state(registry_path: Path, pid: int) -> None:
    """Remove the state file if it is still the one ``pid`` wrote (another `up` may have replaced it)."""
    state = read_state(registry_path, alive=lambda _: True)
    if state is not None and state.pid == pid:
        state_path(registry_path).unlink(missing_ok=True)


def read_state(registry_path: Path, *, alive=None) -> RunState | None:  # type: ignore[no-untyped-def]
    """The running `up` for this registry, or None (no file, unreadable, or its process is gone)."""
    alive = alive or _alive
    try:
        data = json.loads(state_path(registry_path).read_text(encoding="utf-8")[:65536])
        state = RunState(pid=int(data["pid"]), engine_url=str(data["engine_url"]),
                         sidecar_url=str(data["sidecar_url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if alive(state.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
