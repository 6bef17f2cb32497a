"""Admission: may this adapter be served on this engine? One function used by the launcher, `check` and the sidecar.

A refusal is an ``AdapterError`` whose ``code`` is a stable reason (``config_missing``, ``rank_too_high``, ...)
and whose message is one human line naming the adapter and the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenantserve.adapters import AdapterConfig, bytes_on_disk
from tenantserve.errors import AdapterError
from tenantserve.registry import AdapterSpec, Registry


@dataclass(frozen=True)
class Admission:
    """What was learned about an admitted adapter."""

    name: str
    rank: int
    target_modules: tuple[str, ...]
    bytes: int


def admit(registry: Registry, adapter: AdapterSpec, *, max_lora_rank: int | None = None) -> Admission:
    """Check one adapter against the registry's base and engine; raise ``AdapterError`` with a reason code if refused.

    ``max_lora_rank`` is the engine's resolved slot rank (the registry's, or derived); ``None`` skips the rank check.
    """
    path = registry.adapter_path(adapter)
    if not path.is_dir():
        raise AdapterError(f"adapter '{adapter.name}': path {path} is not a directory", code="path_missing")
    cfg = AdapterConfig.read(path, name=adapter.name)
    if cfg.peft_type.upper() != "LORA":
        raise AdapterError(f"adapter '{adapter.name}': peft_type is {cfg.peft_type!r}, only LORA is served",
                           code="not_lora")
    if max_lora_rank is not None and cfg.rank > max_lora_rank:
        raise AdapterError(
            f"adapter '{adapter.name}' has rank {cfg.rank} > max_lora_rank {max_lora_rank}",
            code="rank_too_high",
        )
    return Admission(adapter.name, cfg.rank, cfg.target_modules, bytes_on_disk(path))
