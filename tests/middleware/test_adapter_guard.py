"""vLLM's default multimodal LoRA selection, turned off on vLLM 0.32's real ``BaseServing`` class."""

from __future__ import annotations

import importlib
from types import ModuleType, SimpleNamespace

import pytest

from tenantserve.middleware import adapter_guard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _serving_with(names: list[str]):
    from vllm.lora.request import LoRARequest

    module = importlib.import_module(adapter_guard.SERVING_MODULE)
    serving = module.BaseServing.__new__(module.BaseServing)
    serving.models = SimpleNamespace(
        lora_requests={n: LoRARequest(n, i + 1, f"/x/{n}") for i, n in enumerate(names)},
        is_base_model=lambda name: name == "base")
    return module, serving


def _as_shipped(root: type) -> None:
    """vLLM's selection methods as shipped, on ``root`` and every subclass: an earlier test in this process may have
    loaded vLLM's general plugins, and tenantserve's plugin installs the guard."""
    classes, seen = [root], set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        classes.extend(cls.__subclasses__())
        for name in ("_maybe_get_adapters", "_get_active_default_mm_loras"):
            method = cls.__dict__.get(name)
            if method is not None and hasattr(method, "__wrapped__"):
                setattr(cls, name, method.__wrapped__)


def _chat(part_type: str, model: str | None = "base") -> SimpleNamespace:
    part = {"type": part_type, "uuid": "u1", "tool_reference": 1, "name": "List 3 fruits:"}
    return SimpleNamespace(model=model, messages=[{"role": "user", "content": [part]}])


def test_vllm_alone_picks_an_adapter_by_content_part_type_and_the_guard_stops_it() -> None:
    module, serving = _serving_with(["pirate", "text"])
    _as_shipped(module.BaseServing)
    original = module.BaseServing._maybe_get_adapters
    # the hole, on vLLM's own code (unwrapped): a part typed like another tenant's adapter picks it
    assert original(serving, _chat("pirate"), supports_default_mm_loras=True).lora_name == "pirate"
    assert original(serving, _chat("text_x"), True).lora_name == "text"
    adapter_guard.install(module)
    adapter_guard.install(module)  # twice: wrapped once
    assert module.BaseServing._maybe_get_adapters.__wrapped__ is original
    for request in (_chat("pirate"), _chat("text"), _chat("pirate", model=None)):
        assert serving._maybe_get_adapters(request, supports_default_mm_loras=True) is None
        assert serving._maybe_get_adapters(request, True) is None
    assert serving._maybe_get_adapters(_chat("pirate", model="text")).lora_name == "text"  # `model` still counts
    assert serving._get_active_default_mm_loras(_chat("pirate")) is None


def test_a_vllm_without_the_selection_is_refused_not_assumed() -> None:
    changed = ModuleType("vllm_changed")

    class Serving:
        __module__ = "vllm_changed"

        def pick_adapter(self, request):
            return None

    changed.Serving = Serving
    with pytest.raises(adapter_guard.GuardUnavailable, match="defines no _maybe_get_adapters"):
        adapter_guard.install(changed)
