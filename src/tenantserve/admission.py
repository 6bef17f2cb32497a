"""Admission: may this adapter be served on this engine? One function used by the launcher, `check` and the sidecar.

A refusal is an ``AdapterError`` whose ``code`` is a stable reason and whose message is one human line naming the
adapter and the numbers. The checks run cheapest first; each catches a failure vLLM would hide or report late:
a foreign base (loads fine, behaves subtly wrong), targets that match nothing (silently serves the base), a rank
above the slots (a 500 inside the engine), a truncated download, shapes from another model size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tenantserve.adapters import STAMP_NAME, WEIGHTS_NAME, AdapterConfig, LoraModule, bytes_on_disk, lora_modules
from tenantserve.adapters import read_stamp
from tenantserve.basemodel import BaseCheck, BaseFacts, verify_base
from tenantserve.errors import AdapterError
from tenantserve.fingerprint import fingerprint
from tenantserve.fpcache import FingerprintCache
from tenantserve.registry import NAME_PATTERN, AdapterSpec, Registry
from tenantserve.weights import read_header

__all__ = ["Admission", "BaseCheck", "BaseFacts", "admit", "verify_base"]


@dataclass(frozen=True)
class Admission:
    """What was learned about an admitted adapter."""

    name: str
    rank: int
    target_modules: tuple[str, ...]
    bytes: int
    sha256: str = ""  # of adapter_model.safetensors: the hub's LFS oid
    fingerprint: str = ""  # of the adapter directory (config + weights)
    declared_base: str | None = None
    base_verified: bool = False
    modules: int = 0
    warnings: tuple[str, ...] = ()


def admit(
    registry: Registry,
    adapter: AdapterSpec,
    *,
    max_lora_rank: int | None = None,
    base: BaseFacts | None = None,
    cache: FingerprintCache | None = None,
    adapters_root: Path | None = None,
) -> Admission:
    """Check one adapter against the served base and the engine; raise ``AdapterError`` with a reason if refused.

    ``max_lora_rank``: the engine's slot rank (None skips the rank check). ``base``: facts already read (the launcher
    reads them once for all adapters); default: read now, through ``cache`` (default: the user's cache).
    ``adapters_root``: when set (runtime onboarding), the adapter directory must resolve inside it.
    """
    label = f"adapter '{adapter.name}'"
    if not re.fullmatch(NAME_PATTERN, adapter.name) or ".." in adapter.name:
        raise AdapterError(f"adapter name {adapter.name!r} is not allowed (pattern {NAME_PATTERN})",
                           code="name_invalid")
    path = registry.adapter_path(adapter)
    if adapters_root is not None and not _inside(path, adapters_root):
        raise AdapterError(f"{label}: path {adapter.path} resolves outside {adapters_root}", code="path_escape")
    if not path.is_dir():
        raise AdapterError(f"{label}: path {path} is not a directory", code="path_missing")
    cfg = AdapterConfig.read(path, name=adapter.name)
    if cfg.peft_type.upper() != "LORA":
        raise AdapterError(f"{label}: peft_type is {cfg.peft_type!r}, only LORA is served", code="not_lora")
    if cfg.modules_to_save:
        raise AdapterError(f"{label}: modules_to_save {list(cfg.modules_to_save)} (full copies of base modules) "
                           "cannot be served by vLLM for a causal LM; retrain without them", code="unsupported_modules")
    if features := cfg.unsupported_features():
        raise AdapterError(f"{label}: vLLM cannot serve {', '.join(features)}", code="unsupported_feature")
    if max_lora_rank is not None and cfg.max_rank > max_lora_rank:
        raise AdapterError(f"{label} has rank {cfg.max_rank} > max_lora_rank {max_lora_rank}", code="rank_too_high")

    cache = cache if cache is not None else FingerprintCache.default()
    base = base if base is not None else BaseFacts.read(registry.base_path, cache=cache)
    modules = _check_weights(label, path, cfg, base, max_lora_rank)
    declared, verified, warnings = _check_declared_base(label, adapter, path, base)
    fp = fingerprint(path, cache=cache)
    return Admission(
        name=adapter.name,
        rank=cfg.max_rank,
        target_modules=cfg.target_modules,
        bytes=bytes_on_disk(path),
        sha256=fp.manifest().get(WEIGHTS_NAME, ""),
        fingerprint=fp.value,
        declared_base=declared,
        base_verified=verified,
        modules=modules,
        warnings=warnings,
    )


def _check_weights(label: str, path: Path, cfg: AdapterConfig, base: BaseFacts, max_rank: int | None) -> int:
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [p.name for p in (path / "adapter_model.bin", path / "adapter_model.pt") if p.is_file()]
        if pickled:
            raise AdapterError(f"{label}: {pickled[0]} is a pickle, which cannot be checked without running it; "
                               f"convert it to {WEIGHTS_NAME}", code="weights_format")
        raise AdapterError(f"{label}: {weights} not found", code="weights_missing")
    modules, other = lora_modules(read_header(weights, label=label))
    if other:
        raise AdapterError(f"{label}: {WEIGHTS_NAME} holds non-LoRA tensors ({', '.join(other[:3])}): full module "
                           "weights (modules_to_save, resized embeddings) cannot be served", code="unsupported_modules")
    if not modules:
        raise AdapterError(f"{label}: {WEIGHTS_NAME} holds no LoRA weights: it would silently serve the base model",
                           code="no_target_match")
    if base.tensors is None:
        return len(modules)  # a pickled base: its shapes are unknown here, vLLM checks them at load
    linear = base.linear_modules()
    if not any(cfg.targets(m) for m in linear):
        names = sorted({m.rsplit(".", 1)[-1] for m in linear})
        raise AdapterError(f"{label}: target_modules {list(cfg.target_modules)} match no linear layer of the base "
                           f"(it has {', '.join(names)}): it would silently serve the base model",
                           code="no_target_match")
    for mod in sorted(modules.values(), key=lambda m: m.module):
        _check_module(label, mod, base, linear, cfg, max_rank)
    return len(modules)


def _check_module(label: str, mod: LoraModule, base: BaseFacts, linear: dict[str, tuple[int, int]],
                  cfg: AdapterConfig, max_rank: int | None) -> None:
    name = mod.module
    if mod.a is None or mod.b is None or len(mod.a) != 2 or len(mod.b) != 2:
        raise AdapterError(f"{label}: {name} lacks a 2-D lora_A or lora_B", code="shape_mismatch")
    layer = base.layer_of(name)
    if name not in linear:
        if layer is not None and base.num_layers is not None and layer >= base.num_layers:
            raise AdapterError(f"{label}: weights for layer {layer} ({name}) but the base has {base.num_layers} "
                               "layers: trained on another model", code="shape_mismatch")
        raise AdapterError(f"{label}: weights for {name}, which the base does not have", code="unknown_module")
    rank = mod.a[0]
    if mod.b[1] != rank:
        raise AdapterError(f"{label}: {name} lora_A rank {rank} != lora_B rank {mod.b[1]}", code="shape_mismatch")
    if max_rank is not None and rank > max_rank:
        raise AdapterError(f"{label} has rank {rank} in {name} > max_lora_rank {max_rank}", code="rank_too_high")
    out_dim, in_dim = linear[name]
    if mod.embedding:  # lora_embedding_A: [r, vocab], lora_embedding_B: [hidden, r]
        if mod.a[1] != out_dim:
            raise AdapterError(f"{label}: {name} delta covers a vocabulary of {mod.a[1]}, the base has {out_dim}: "
                               "added tokens cannot be served", code="unsupported_modules")
        want = (in_dim, rank)
        got = mod.b
    else:
        want, got = (in_dim, out_dim), (mod.a[1], mod.b[0])
    if got != want:
        hidden = f" (base hidden_size {base.hidden_size})" if base.hidden_size else ""
        raise AdapterError(f"{label}: {name} expects in/out {want[0]}x{want[1]} from the base{hidden}, adapter has "
                           f"{got[0]}x{got[1]}: trained on another model size", code="shape_mismatch")


def _check_declared_base(label: str, spec: AdapterSpec, path: Path, base: BaseFacts) -> tuple[str | None, bool, tuple]:
    stamp = read_stamp(path, name=spec.name)
    if spec.base_fingerprint and stamp and spec.base_fingerprint != stamp:
        raise AdapterError(f"{label}: the registry says base {spec.base_fingerprint} but {STAMP_NAME} says {stamp}",
                           code="base_conflict")
    declared = spec.base_fingerprint or stamp
    served = base.fingerprint.value
    if declared is None:
        if spec.allow_unverified_base:
            return None, False, (f"{label} declares no base; served on {served} unverified "
                                 "(allow_unverified_base: true)",)
        raise AdapterError(f"{label} does not declare the base it was trained on: run `tenantserve stamp {path} "
                           f"--base BASE_DIR` with the training base, or set base_fingerprint in the registry "
                           "(or allow_unverified_base: true to serve it anyway)", code="base_undeclared")
    if declared != served:
        raise AdapterError(f"{label} was trained on base {declared}, but the served base is {served}",
                           code="base_mismatch")
    return declared, True, ()


def _inside(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top and real != top
