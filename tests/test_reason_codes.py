"""One list of reason codes: every code the source can raise or answer is an ``errors.Reason``, and the README's
reason-code tables document exactly the enum (every member documented, every documented code a member)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator

import tenantserve
from tenantserve.errors import Reason, TenantserveError
from tests.conftest import ROOT

#: Keyword arguments that carry a reason code (``code=``; the bounded readers' ``too_large=``/``unreadable=``; the
#: operator client's ``missing=``).
CODE_KEYWORDS = {"code", "too_large", "unreadable", "missing"}


def _string_constants(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def codes_in_source(tree: ast.AST) -> set[str]:
    """String literals the source uses as reason codes: class-level ``code = "..."`` (tuple assignments too),
    ``CODE_KEYWORDS`` arguments, ``"code": "..."`` dict entries, ``error_response(status, "...")`` and the second
    item of each pair in a ``*REASONS`` table (vLLM message fragment -> code)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else []
                for target in targets:
                    names = target.elts if isinstance(target, ast.Tuple) else [target]
                    values = stmt.value.elts if isinstance(stmt.value, ast.Tuple) else [stmt.value]
                    for name, value in zip(names, values, strict=False):
                        if isinstance(name, ast.Name) and name.id == "code":
                            found |= {v for v in _string_constants(value)}
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == "code":
                    found |= set(_string_constants(stmt.value)) if stmt.value else set()
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in CODE_KEYWORDS:
                    found |= set(_string_constants(keyword.value))
            if isinstance(node.func, ast.Name) and node.func.id == "error_response" and len(node.args) > 1:
                found |= set(_string_constants(node.args[1]))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code" and value is not None:
                    found |= set(_string_constants(value))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("REASONS")
                                                 for t in node.targets):
            for pair in getattr(node.value, "elts", []):
                if isinstance(pair, ast.Tuple) and len(pair.elts) == 2:
                    found |= set(_string_constants(pair.elts[1]))
    return found


def test_the_scan_finds_codes_in_every_form() -> None:
    """The scanner itself, on each form it claims to read (so a silent miss cannot make the next test pass)."""
    sample = '''
class A(Exception):
    code = "a1"
class B(Exception):
    http_status, code, reason = 400, "b1", "not_a_code"
raise A("m", code="c1" if x else "c2")
read_bounded(p, too_large="d1", unreadable="d2")
client.delete(path, missing="e1")
error_response(401, "f1", "message")
problems.append({"check": "engine", "code": "g1"})
_VLLM_REASONS = (("DoRA", "h1"), ("bias", "h2"))
'''
    assert codes_in_source(ast.parse(sample)) == {"a1", "b1", "c1", "c2", "d1", "d2", "e1", "f1", "g1", "h1", "h2"}


def test_every_code_in_the_source_is_a_reason() -> None:
    strays = {}
    for path in sorted((ROOT / "src" / "tenantserve").rglob("*.py")):
        unknown = codes_in_source(ast.parse(path.read_text(encoding="utf-8"))) - set(Reason)
        if unknown:
            strays[str(path.relative_to(ROOT))] = sorted(unknown)
    assert strays == {}, f"codes missing from tenantserve.errors.Reason: {strays}"


def _all_error_classes() -> set[type[TenantserveError]]:
    for module in pkgutil.walk_packages(tenantserve.__path__, "tenantserve."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found, stack = set(), [TenantserveError]
    while stack:
        for sub in stack.pop().__subclasses__():
            found.add(sub)
            stack.append(sub)
    return found


def test_every_error_class_code_is_a_reason() -> None:
    classes = _all_error_classes()
    assert len(classes) > 20  # every package was imported
    strays = {f"{c.__module__}.{c.__qualname__}": c.code for c in classes if c.code not in set(Reason)}
    assert strays == {}


def reason_table_codes(markdown: str) -> dict[str, int]:
    """Code -> line number, from every table whose first header cell is ``reason code`` (first column only)."""
    documented: dict[str, int] = {}
    in_table = False
    for number, line in enumerate(markdown.splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if not cells:
            in_table = False
        elif cells[0] == "reason code":
            in_table = True
        elif in_table and not set(cells[0]) <= set("-: "):
            for code in re.findall(r"`([a-z][a-z0-9_]*)`", cells[0]):
                documented.setdefault(code, number)
    return documented


def test_readme_documents_exactly_the_reasons() -> None:
    documented = reason_table_codes((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(documented) > 50  # the tables were found
    undocumented = sorted(set(Reason) - set(documented))
    unknown = {code: f"README.md:{line}" for code, line in documented.items() if code not in set(Reason)}
    assert undocumented == [], f"in errors.Reason, not in a README 'reason code' table: {undocumented}"
    assert unknown == {}, f"in a README 'reason code' table, not in errors.Reason: {unknown}"


def test_reason_values_are_unique_snake_case() -> None:
    values = [r.value for r in Reason]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", v) and v.upper() == r.name for v, r in zip(values, Reason))


def test_readme_parser_reads_only_first_columns_of_reason_tables() -> None:
    """Guard for the parser (so the both-ways test cannot pass by reading nothing or everything)."""
    markdown = ("| reason code | why |\n|---|---|\n| `a_b` / `c` | uses `not_me` |\n\n| command | x |\n|---|---|\n"
                "| `d` | y |\n\ntext `g`\n\n| reason code | status |\n|---|---|\n| `e` | `f` |\n")
    assert reason_table_codes(markdown) == {"a_b": 3, "c": 3, "e": 13}
