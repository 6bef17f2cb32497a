"""The sidecar judges runtime adapters against the slots the launcher gave the engine (issue 11's bug)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tenantserve.engine.launch import derive_max_lora_rank
from tenantserve.registry.schema import Registry
from tenantserve.sidecar.app import slot_rank


def test_a_rank_pattern_sizes_the_slots_for_the_sidecar_as_for_the_launcher(
        write_registry: Callable[[dict], Path], make_adapter: Callable[..., Path]) -> None:
    """r: 8 with rank_pattern {q_proj: 16} and no max_lora_rank: the launcher derives rank-16 slots, so the sidecar
    must accept a rank-16 adapter at runtime (it used the plain r and refused it as rank_too_high)."""
    mixed = make_adapter("mixed", rank=8, rank_pattern={"q_proj": 16})
    path = write_registry({"base": {"name": "b", "path": "base"},
                           "tenants": [{"id": "t", "adapters": [{"name": "mixed", "path": str(mixed)}]}]})
    registry = Registry.load(path, check_paths=False)
    assert derive_max_lora_rank([16]) == 16
    assert slot_rank(registry) == 16
