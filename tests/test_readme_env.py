"""Every environment variable tenantserve reads is one constant (``tenantserve.settings``) and is documented in the
README's "Environment" table."""

from __future__ import annotations

import ast
import re

from tenantserve import settings
from tests.conftest import ROOT

NAME = re.compile(r"TENANTSERVE_[A-Z][A-Z_]+[A-Z]")


def _environment_table() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Environment\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _declared() -> set[str]:
    return set(settings.settings_env_names()) | set(settings.OTHER_ENV_NAMES)


def test_every_variable_the_code_reads_is_in_the_readme() -> None:
    used = _declared()
    for path in (ROOT / "src").rglob("*.py"):
        used |= set(NAME.findall(path.read_text(encoding="utf-8")))  # prose too: a name a message tells users to set
    table = _environment_table()
    documented = set(re.findall(r"`(TENANTSERVE_[A-Z_]+)`", table))
    assert used - documented == set(), f"not in README's Environment table: {sorted(used - documented)}"
    assert documented - used == set(), f"documented but never read: {sorted(documented - used)}"


def test_every_variable_name_is_spelled_once_as_a_constant() -> None:
    """Code that reads or sets a variable imports its constant: a string that is exactly a variable's name appears
    only in settings.py (prose in messages and docstrings may mention it)."""
    settings_py = ROOT / "src" / "tenantserve" / "settings.py"
    spelled: dict[str, list[str]] = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value):
                spelled.setdefault(node.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    elsewhere = {name: [w for w in where if not w.startswith(str(settings_py.relative_to(ROOT)))]
                 for name, where in spelled.items()}
    assert {name: where for name, where in elsewhere.items() if where} == {}
    assert set(spelled) == set(settings.OTHER_ENV_NAMES)  # Settings' own come from ENV_PREFIX + the field name
    assert all(len(where) == 1 for where in spelled.values()), spelled
    # the registry's variable is also Settings.registry's: the engine side reads it without Settings
    assert set(settings.OTHER_ENV_NAMES) & set(settings.settings_env_names()) == {settings.REGISTRY_ENV}
    assert settings.env_name("registry") == settings.REGISTRY_ENV
