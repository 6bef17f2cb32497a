"""The only adapter a request may run is its ``model``: turn off vLLM's "default multimodal LoRA" selection.

vLLM 0.32's ``BaseServing._maybe_get_adapters(request, supports_default_mm_loras=True)`` (chat, batch chat and
token-in-token-out call it so) applies any loaded adapter whose name equals the prefix (before '_') of a chat
content-part ``type``: a tenant allowed the base could name another tenant's adapter in a content part and run it,
and an adapter named ``text`` ran for every chat request. The middleware checks only ``model``, so here every class
that defines ``_maybe_get_adapters`` (found by looking, never assumed) is wrapped to call it with
``supports_default_mm_loras=False``, and ``_get_active_default_mm_loras`` answers None. Installed in the API server
(the middleware's startup, and the vLLM plugin when the module is imported); installing twice wraps once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from tenantserve.errors import TenantserveError
from tenantserve.vllm_plugin.patching import is_wrapped, mark_wrapped

log = logging.getLogger("tenantserve.middleware")

SERVING_MODULE = "vllm.entrypoints.serve.engine.serving"
SELECT = "_maybe_get_adapters"
DEFAULT_MM = "_get_active_default_mm_loras"
FLAG = "supports_default_mm_loras"


class GuardUnavailable(TenantserveError):
    """vLLM's adapter selection no longer looks like 0.32's: refuse to serve rather than guess."""

    code = "adapter_guard_unavailable"
    exit_code = 3


def install(module: ModuleType) -> list[str]:
    """Wrap every class in ``module`` (and its loaded subclasses) that defines the selection; the qualified names of
    what was wrapped now. Raises ``GuardUnavailable`` when no class selects adapters (vLLM changed shape)."""
    owners = [obj for obj in vars(module).values()
              if isinstance(obj, type) and obj.__module__ == module.__name__ and SELECT in vars(obj)]
    if not owners:
        raise GuardUnavailable(f"{module.__name__} defines no {SELECT}: this vLLM picks adapters somewhere "
                               "tenantserve does not know; refusing to serve tenants on it")
    done: list[str] = []
    for cls in _with_subclasses(owners):
        done += _guard_class(cls)
    if done:
        log.info("tenantserve: default multimodal LoRA selection disabled (%s)", ", ".join(done))
    return done


def _with_subclasses(roots: list[type]) -> list[type]:
    seen: list[type] = []
    stack = list(roots)
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return seen


def _guard_class(cls: type) -> list[str]:
    done = []
    select = vars(cls).get(SELECT)
    if select is not None and not is_wrapped(select):
        if not callable(select):
            raise GuardUnavailable(f"{cls.__qualname__}.{SELECT} is not a method")
        setattr(cls, SELECT, _without_default_mm(select))
        done.append(f"{cls.__qualname__}.{SELECT}")
    default_mm = vars(cls).get(DEFAULT_MM)
    if default_mm is not None and not is_wrapped(default_mm):
        setattr(cls, DEFAULT_MM, mark_wrapped(_never, default_mm))
        done.append(f"{cls.__qualname__}.{DEFAULT_MM}")
    return done


def _without_default_mm(select: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(select)
    if FLAG not in signature.parameters:  # this vLLM selects by model only here; keep it, checked by the tests
        def passthrough(*args: Any, **kwargs: Any) -> Any:
            return select(*args, **kwargs)
        return mark_wrapped(passthrough, select)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments[FLAG] = False
        return select(*bound.args, **bound.kwargs)

    return mark_wrapped(guarded, select)


def _never(self: object, request: object) -> None:
    """No adapter is ever chosen by a request's content-part types."""
    return None
