"""``plan --measure``: the slot reservation and adapter bytes the engine's worker allocated, beside the formula.

Starts vLLM offline on the default registry (``memprobe``, in a child process) and reads its LoRA manager's tensors.
"""

from __future__ import annotations

from click.testing import CliRunner

from tenantserve.cli.plan import command
from tenantserve.registry.schema import Registry
from tests.conftest import DEFAULT_REGISTRY


def test_engine_tensors_match_the_formula_within_five_percent() -> None:
    res = CliRunner().invoke(command, ["--registry", str(DEFAULT_REGISTRY), "--measure"], terminal_width=200)
    assert res.exit_code == 0, res.output
    rows = {cells[0]: cells[1:] for line in res.output.splitlines()
            if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 4}
    names = [a.name for _, a in Registry.load(DEFAULT_REGISTRY).adapters()]
    for item in ["slots: linear layers of every block", "slots: embed_tokens + lm_head", "slot reservation",
                 *(f"adapter {n}" for n in names)]:
        ratio = float(rows[item][2])
        assert abs(ratio - 1) <= 0.05, (item, rows[item], res.output)
    assert "agree within 5%" in res.output
