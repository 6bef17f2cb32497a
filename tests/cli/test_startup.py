"""Operator commands start fast: the CLI imports a command's module only when it runs, and nothing on the way to
``keys``, ``tenants``, ``launch`` or the middleware imports torch or vLLM (seconds each on this machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "vllm", "transformers", "openai")

_PROBE = """
import json, sys
from click.testing import CliRunner
from tenantserve.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
assert result.exit_code == 0, result.output
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("argv", [["keys", "create", "--help"], ["tenants", "--help"], ["adapters", "--help"],
                                  ["launch", "--help"], ["check", "--help"], ["--version"]])
def test_an_operator_command_imports_no_heavy_module(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert json.loads(out.splitlines()[-1]) == []


def test_the_middleware_and_the_launch_plan_import_no_heavy_module() -> None:
    code = ("import json, sys; import tenantserve.middleware, tenantserve.engine.launch, "
            "tenantserve.vllm_plugin.patching;"
            f" print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert json.loads(out) == []


def test_every_command_is_listed_and_resolves() -> None:
    from tenantserve.cli import COMMANDS, main

    assert main.list_commands(None) == sorted(COMMANDS)  # type: ignore[arg-type]
    for name in COMMANDS:
        assert main.get_command(None, name).name == name  # type: ignore[arg-type,union-attr]
    assert main.get_command(None, "nosuch") is None  # type: ignore[arg-type]
