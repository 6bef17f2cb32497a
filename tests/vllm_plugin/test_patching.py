"""Post-import hooks, the wrapped marker, and error isolation."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantserve.vllm_plugin.patching import PostImportHook, is_wrapped, mark_wrapped, safely, when_imported


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "tspkg").mkdir()
    (tmp_path / "tspkg" / "__init__.py").write_text("")
    (tmp_path / "tspkg" / "target.py").write_text("class Thing:\n    def go(self):\n        return 1\n")
    sys.path.insert(0, str(tmp_path))
    before = list(sys.meta_path)  # the plugin's own hooks may be pending (an earlier test loaded vLLM's plugins)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in ("tspkg.target", "tspkg"):
        sys.modules.pop(name, None)
    sys.meta_path[:] = before


def _pending(name: str) -> bool:
    return any(isinstance(f, PostImportHook) and f.name == name for f in sys.meta_path)


def test_callback_runs_after_a_later_import_once(module_dir: Path) -> None:
    seen: list[str] = []
    when_imported("tspkg.target", lambda m: seen.append(m.Thing.__name__))
    when_imported("tspkg.target", lambda m: seen.append("second hook"))  # one pending hook per module
    assert seen == [] and "tspkg.target" not in sys.modules
    import tspkg.target  # noqa: F401

    assert seen == ["Thing"]
    assert not _pending("tspkg.target")
    when_imported("tspkg.target", lambda m: seen.append("already imported"))
    assert seen == ["Thing", "already imported"]


def test_a_failing_callback_does_not_break_the_import(module_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    def boom(_module: object) -> None:
        raise RuntimeError("bug in the plugin")

    when_imported("tspkg.target", boom)
    import tspkg.target

    assert tspkg.target.Thing().go() == 1
    assert "bug in the plugin" in caplog.text


def test_safely_logs_once_and_returns_none(caplog: pytest.LogCaptureFixture) -> None:
    def bad() -> int:
        raise ValueError("nope")

    assert safely(bad) is None and safely(bad) is None
    assert len([r for r in caplog.records if "bad" in r.getMessage()]) == 1
    assert safely(lambda x: x + 1, 1) == 2


def test_mark_wrapped() -> None:
    def original() -> None: ...
    def wrapper() -> None: ...

    assert not is_wrapped(original)
    w = mark_wrapped(wrapper, original)
    assert is_wrapped(w) and w.__wrapped__ is original and w.__name__ == "original"
