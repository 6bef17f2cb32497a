"""The README's operator steps ("Sidecar and operations") run as written, on a fresh copy of the repository.

The ```bash block is parsed from README.md and each line run with bash in a temp dir set up like a fresh clone
(``configs/adapters.yaml`` copied, ``models/`` beside it, no adapters yet); the ``tenantserve up`` line runs in the
background and the rest wait for its ready line. Only the ports differ from the README (free ones through
TENANTSERVE_PORT / TENANTSERVE_SIDECAR_PORT: other tests may hold 8000/8001); the client commands find the sidecar
through `up`'s state file, as an operator's do. Then the refusal an operator meets without the stamp step names
every fix, and ``--allow-unverified-base`` is one of them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tenantserve.demo.run import free_port
from tenantserve.engine.runstate import read_state, state_path
from tests.waiting import interrupt

ROOT = Path(__file__).resolve().parents[2]


def readme_operator_block() -> list[str]:
    """The command lines of the first ```bash block under "## Sidecar and operations", comments stripped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Sidecar and operations"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no bash block in the README's operator section"
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def _fresh_clone(tmp: Path) -> Path:
    clone = tmp / "clone"
    (clone / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "adapters.yaml", clone / "configs" / "adapters.yaml")
    (clone / "models").symlink_to(ROOT / "models")
    return clone


def test_readme_operator_steps_run_as_written(tmp_path: Path) -> None:
    lines = readme_operator_block()
    assert any(line.startswith("tenantserve stamp ") for line in lines)
    clone = _fresh_clone(tmp_path)
    port, sidecar_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTSERVE_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               TENANTSERVE_PORT=str(port), TENANTSERVE_SIDECAR_PORT=str(sidecar_port))
    registry = clone / "configs" / "adapters.yaml"
    up: subprocess.Popen[bytes] | None = None
    up_log = tmp_path / "up.log"

    def run(line: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"`{line}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return done

    try:
        for line in lines:
            if line.startswith("export "):
                name = line.removeprefix("export ").split("=", 1)[0]
                env[name] = run(f'{line}; printf %s "${name}"').stdout
                assert env[name]
            elif line.startswith("tenantserve up"):
                up = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=clone, env=env,
                                      stdout=up_log.open("wb"), stderr=subprocess.STDOUT)
                deadline = time.monotonic() + 600
                while "tenantserve: ready:" not in up_log.read_text():
                    assert up.poll() is None, up_log.read_text()[-3000:]
                    assert time.monotonic() < deadline, "up was not ready in 600 s"
                    time.sleep(1)
                state = read_state(registry)
                assert state is not None and state.sidecar_url == f"http://127.0.0.1:{sidecar_port}"
                ready = httpx.get(f"{state.sidecar_url}/readyz", timeout=30)
                assert ready.status_code == 200, ready.text
            else:
                out = run(line)
                if line.startswith("tenantserve adapters add"):
                    entry = next(a for t in yaml.safe_load(registry.read_text())["tenants"] if t["id"] == "hooli"
                                 for a in t["adapters"])
                    assert entry["path"] == "../adapters/hooli/sql-v1"  # relative to the registry, like the others
                    assert "hooli-sql@v1 (tenant hooli): loaded" in out.stdout
                if line == "tenantserve adapters list":
                    assert "hooli-sql@v1" in out.stdout and "loaded" in out.stdout
        assert up is not None, "the README block has no `tenantserve up` line"
        assert "hooli" not in registry.read_text()  # the block ends by offboarding

        # Without the stamp step: refused, naming every fix; one of them then works.
        run("tenantserve tenants add umbrella && mkdir -p adapters/umbrella && "
            "cp -r models/embedded/adapters/pirate adapters/umbrella/raw")
        refused = subprocess.run(["bash", "-c", "tenantserve adapters add umbrella umbrella-raw raw"], cwd=clone,
                                 env=env, capture_output=True, text=True, timeout=300)
        message = refused.stdout + refused.stderr
        assert refused.returncode == 2 and "[base_undeclared]" in message, message
        for fix in ("tenantserve stamp ", "adapters/umbrella/raw", "--base-fingerprint", "--allow-unverified-base"):
            assert fix in message, (fix, message)
        assert "umbrella-raw" not in registry.read_text()  # a refusal changes nothing
        allowed = run("tenantserve adapters add umbrella umbrella-raw raw --allow-unverified-base")
        assert "umbrella-raw (tenant umbrella): loaded" in allowed.stdout
        up.send_signal(signal.SIGINT)
        assert up.wait(120) == 0
        assert not state_path(registry).exists()
    finally:
        if up is not None:
            interrupt(up, 120)
