"""Every environment variable tenantserve reads is documented in the README's "Environment" table."""

from __future__ import annotations

import re

from tenantserve.settings import Settings
from tests.conftest import ROOT


def _environment_table() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Environment\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_every_variable_the_code_reads_is_in_the_readme() -> None:
    used = {f"TENANTSERVE_{name.upper()}" for name in Settings.model_fields}
    for path in (ROOT / "src").rglob("*.py"):
        used |= set(re.findall(r"TENANTSERVE_[A-Z][A-Z_]+[A-Z]", path.read_text(encoding="utf-8")))
    table = _environment_table()
    documented = set(re.findall(r"`(TENANTSERVE_[A-Z_]+)`", table))
    assert used - documented == set(), f"not in README's Environment table: {sorted(used - documented)}"
    assert documented - used == set(), f"documented but never read: {sorted(documented - used)}"
