"""How the plugin attaches to vLLM without importing it early, twice, or fatally.

- ``when_imported``: run a callback once a module is imported (now, if it already is). The API server loads
  general plugins too, and importing vLLM's scheduler or LoRA manager there would cost seconds for nothing; in
  EngineCore and the workers those modules are imported anyway, and the hooks attach then.
- ``mark_wrapped``/``is_wrapped``: a wrapped method carries a marker, so registering twice wraps once.
- ``safely``: counting must never take the engine loop down; a failure is logged once and counting goes on.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

logger = logging.getLogger("tenantserve.vllm_plugin")

MARKER = "__tenantserve_wrapped__"


def mark_wrapped(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    setattr(wrapper, MARKER, True)
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(original, "__name__", wrapper.__name__)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    return wrapper


def is_wrapped(fn: object) -> bool:
    return bool(getattr(fn, MARKER, False))


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, after: Callable[[ModuleType], None]) -> None:
        self._inner = inner
        self._after = after

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._after(module)


class PostImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of one module so ``callback`` runs right after it executes."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback
        self._busy = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader, self._fire)
        return spec

    def _fire(self, module: ModuleType) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        safely(self.callback, module)


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Run ``callback(module)`` once ``name`` is imported. At most one pending hook per module name."""
    module = sys.modules.get(name)
    if module is not None:
        safely(callback, module)
        return
    if any(isinstance(f, PostImportHook) and f.name == name for f in sys.meta_path):
        return
    sys.meta_path.insert(0, PostImportHook(name, callback))


def safely(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; on error log it (once per function) and return None instead of raising into vLLM."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        target = getattr(fn, "__func__", fn)
        if not getattr(target, "_tenantserve_failed", False):
            try:
                target._tenantserve_failed = True
            except AttributeError:
                pass
            logger.exception("tenantserve vLLM plugin: %s failed; the engine goes on without it",
                             getattr(fn, "__qualname__", fn))
        return None
