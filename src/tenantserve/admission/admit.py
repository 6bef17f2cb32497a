"""Admission: may this adapter be served on this engine? One function used by the launcher, `check` and the sidecar.

A refusal is an ``AdapterError`` whose ``code`` is a stable reason and whose message is one human line naming the
adapter (``who``: ``adapter 'sql'``, the message's first words) and the numbers. The checks run cheapest first;
each catches a failure vLLM would hide or report late: a foreign base (loads fine, behaves subtly wrong), targets
that match nothing (silently serves the base), a rank above the slots (a 500 inside the engine), a truncated
download, shapes from another model size.

The rule: admission never accepts what vLLM's loader refuses. The adapter config goes through vLLM's own validation
(``PEFTHelper`` against the engine's ``LoRAConfig``, imported on first use: importing vLLM costs seconds and
~500 MiB, once per process); tenantserve adds what vLLM checks late or never: the weights against the config and
the base, and the engine's ``--lora-target-modules`` filter.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tenantserve.admission.adapter_dir import (
    CONFIG_NAME,
    STAMP_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    LoraModule,
    MatchBudget,
    adapter_name_segments,
    bytes_on_disk,
    lora_modules,
    read_stamp,
)
from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.served_base import BaseCheck, BaseFacts, verify_base
from tenantserve.admission.weight_values import check_dtypes, check_scalings, check_values, scalings
from tenantserve.admission.weights import read_header
from tenantserve.errors import AdapterError, EngineError, RegistryError
from tenantserve.registry.knobs import ALLOWED_LORA_RANKS, LLAMA_PACKED, EngineLora
from tenantserve.registry.schema import NAME_PATTERN, AdapterSpec, Registry

__all__ = ["LLAMA_PACKED", "Admission", "BaseCheck", "BaseFacts", "EngineLora", "admit", "engine_keeps", "verify_base"]


@dataclass(frozen=True)
class Admission:
    """What was learned about an admitted adapter: ``rank``, the largest rank a slot must hold (``rank_pattern``
    included); ``bytes``, its weight files on disk; ``modules``, how many base modules it adapts; ``warnings``, what
    is served differently from what it asks (modules the engine's target filter drops, an unverified base)."""

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
    lora_config: EngineLora | None = None,
) -> Admission:
    """Check one adapter against the served base and the engine; raise ``AdapterError`` with a reason if refused.

    ``lora_config``: the engine's LoRA settings (``EngineLora``); when given, its ``max_lora_rank`` is the slot
    rank and ``max_lora_rank`` is ignored. Without it the engine is described by ``max_lora_rank`` alone (None: the
    largest vLLM allows, 512). ``base``: facts already read (the launcher reads them once for all adapters);
    default: read now, through ``cache`` (default: the user's cache). ``adapters_root``: when set (runtime
    onboarding), the adapter directory must resolve inside it.

    Raises ``AdapterError`` (reason codes: README, "Fingerprints and admission"); ``RegistryError``
    (engine_lora_invalid) when vLLM refuses the engine settings themselves; ``EngineError`` (engine_missing) when
    vLLM is not installed; ``BaseModelError`` when the base cannot be read.
    """
    name = adapter.name
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or ".." in name:
        raise AdapterError(f"adapter name {_short(name)} is not allowed (pattern {NAME_PATTERN})",
                           code="name_invalid")
    who = f"adapter '{name}'"
    path = _adapter_dir(who, registry, adapter, adapters_root)
    cfg = AdapterConfig.read(path, name=name)
    if cfg.peft_type.upper() != "LORA":
        raise AdapterError(f"{who}: peft_type is {_short(cfg.peft_type)}, only LORA is served", code="not_lora")
    if cfg.modules_to_save:
        raise AdapterError(f"{who}: modules_to_save {_short(list(cfg.modules_to_save))} (full copies of base "
                           "modules) cannot be served by vLLM for a causal LM; retrain without them",
                           code="unsupported_modules")
    largest = ALLOWED_LORA_RANKS[-1]
    engine = lora_config if lora_config is not None else EngineLora(max_lora_rank=max_lora_rank or largest)
    rank_refusal = vllm_validate(who, cfg, engine)
    budget = MatchBudget(who)
    rank_error = AdapterError(f"{who} has rank {cfg.max_rank} > max_lora_rank {engine.max_lora_rank}",
                              code="rank_too_high") if rank_refusal is not None else None
    try:
        modules = _read_weights(who, path, cfg, budget)
    except AdapterError as exc:  # vLLM refuses the rank before it reads weights; a config that lies is the cause
        if rank_error is None or exc.code == "shape_mismatch":
            raise
        raise rank_error from None
    if rank_error is not None:
        raise rank_error
    raw = cfg.raw
    check_scalings(who, scalings(cfg.rank, cfg.alpha, dict(cfg.rank_pattern),
                                   {k: float(v) for k, v in (raw.get("alpha_pattern") or {}).items()},
                                   bool(raw.get("use_rslora"))))
    check_values(who, path / WEIGHTS_NAME)
    cache = cache if cache is not None else FingerprintCache.default()
    base = base if base is not None else BaseFacts.read(registry.base_path, cache=cache)
    warnings = _check_base_and_engine(who, modules, cfg, base, engine, budget)
    declared, verified, base_warnings = _check_declared_base(who, adapter, path, base)
    try:
        fp, size = fingerprint(path, cache=cache), bytes_on_disk(path)
    except OSError as exc:  # a file removed or replaced while it was being checked
        raise AdapterError(f"{who}: its files changed while being checked ({exc.strerror})",
                           code="adapter_changed") from None
    return Admission(
        name=name,
        rank=cfg.max_rank,
        target_modules=cfg.target_modules,
        bytes=size,
        sha256=fp.manifest().get(WEIGHTS_NAME, ""),
        fingerprint=fp.value,
        declared_base=declared,
        base_verified=verified,
        modules=len(modules),
        warnings=(*warnings, *base_warnings),
    )


# -- vLLM's own validation -------------------------------------------------------------------------------------------

#: Fragments of vLLM 0.32's ``PEFTHelper`` refusals and their reasons; the first one found in a message decides.
_VLLM_REASONS = (
    ("modules_to_save", "unsupported_modules"),
    ("DoRA", "unsupported_feature"),
    ("LoRA bias", "unsupported_feature"),
    ("init_lora_weights", "unsupported_feature"),
    ("aLoRA", "unsupported_feature"),
    ("layer_replication", "unsupported_feature"),
    ("BD-LoRA", "unsupported_feature"),
    ("QALoRA", "unsupported_feature"),
    ("Adapter bias", "unsupported_feature"),
    ("Missing required configuration fields", "config_invalid"),
    ("must be a positive", "config_invalid"),
    ("is greater than max_lora_rank", "rank_too_high"),
)


def vllm_validate(who: str, cfg: AdapterConfig, engine: EngineLora) -> str | None:
    """Run vLLM's adapter-config validation, as its worker does before loading: ``PEFTHelper`` built from the
    config (what ``PEFTHelper.from_local_dir`` does, on the bytes admission already read within its size limit,
    so the file is neither re-read unbounded nor swapped in between), then ``validate_legal`` against the
    engine's ``LoRAConfig``. ``max_position_embeddings`` is only recorded by vLLM, never checked: the engine's
    value when known, else None (the base is not read for it).

    Raises ``AdapterError`` (config_invalid, unsupported_feature, unsupported_modules); returns vLLM's message
    when its only complaint is the rank (the caller reports ``rank_too_high`` after checking the weights).
    """
    lora_cls, helper_cls = _vllm()
    try:
        lora = lora_cls(max_lora_rank=engine.max_lora_rank, max_loras=engine.max_loras,
                        max_cpu_loras=engine.max_cpu_loras, lora_dtype=engine.lora_dtype,
                        target_modules=list(engine.target_modules) if engine.target_modules is not None else None)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise RegistryError(f"vLLM refuses the engine's LoRA settings {engine}: {_one_line(exc)}",
                            code="engine_lora_invalid") from None
    try:
        helper = helper_cls.from_dict({**cfg.raw, "vllm_max_position_embeddings": engine.max_position_embeddings})
        helper.validate_legal(lora)
    except ValueError as exc:
        message = _one_line(exc)
        codes = [code for fragment, code in _VLLM_REASONS if fragment in message]
        refusal = next((c for c in codes if c != "rank_too_high"), None)
        if refusal is None and codes:
            return message
        raise AdapterError(f"{who}: vLLM refuses its {CONFIG_NAME}: {message}",
                           code=refusal or "config_invalid") from None
    except (TypeError, AttributeError, KeyError, OverflowError, ZeroDivisionError, RecursionError) as exc:
        raise AdapterError(f"{who}: vLLM cannot read its {CONFIG_NAME}: {type(exc).__name__}: {_one_line(exc)}",
                           code="config_invalid") from None
    return None


def _vllm() -> tuple[type, type]:
    # vLLM's import warns on every CPU-only machine that Triton has no CPU backend: noise on `check`'s output,
    # irrelevant to reading an adapter config (the engine process logs it anyway).
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)
    try:
        from vllm.config.lora import LoRAConfig
        from vllm.lora.peft_helper import PEFTHelper
    except ImportError as exc:
        raise EngineError(f"admission runs vLLM's own adapter validation, but vLLM cannot be imported ({exc}): "
                          "install tenantserve[cpu] or tenantserve[gpu]", code="engine_missing") from None
    return LoRAConfig, PEFTHelper


# -- the weights against the config, the base and the engine ---------------------------------------------------------


def _read_weights(who: str, path: Path, cfg: AdapterConfig, budget: MatchBudget) -> list[LoraModule]:
    """The adapted modules, sorted, once the weights are known to be what the config describes."""
    weights = path / WEIGHTS_NAME
    if not os.path.lexists(weights):  # present but not a regular file (a FIFO, a device): read_header refuses it
        pickled = [p.name for p in (path / "adapter_model.bin", path / "adapter_model.pt") if p.is_file()]
        if pickled:
            raise AdapterError(f"{who}: {pickled[0]} is a pickle, which cannot be checked without running it; "
                               f"convert it to {WEIGHTS_NAME}", code="weights_format")
        raise AdapterError(f"{who}: {weights} not found", code="weights_missing")
    tensors = read_header(weights, who=who)
    check_dtypes(who, {name: info.dtype for name, info in tensors.items()})
    modules, other = lora_modules(tensors)
    if named := adapter_name_segments(other):
        example = next(n for n in other if adapter_name_segments([n]))
        raise AdapterError(
            f"{who}: {WEIGHTS_NAME} tensor names carry PEFT's adapter name {_short(repr(sorted(named)[0]))} "
            f"(e.g. {_short(example, 200)}): it was saved with model.state_dict() instead of save_pretrained(); "
            "re-save it with model.save_pretrained(DIR)", code="weights_state_dict")
    if other:
        raise AdapterError(f"{who}: {WEIGHTS_NAME} holds non-LoRA tensors ({_short(', '.join(other[:3]))}): full "
                           "module weights (modules_to_save, resized embeddings) cannot be served",
                           code="unsupported_modules")
    if not modules:
        raise AdapterError(f"{who}: {WEIGHTS_NAME} holds no LoRA weights: it would silently serve the base model",
                           code="no_target_match")
    ordered = sorted(modules.values(), key=lambda m: m.module)
    for mod in ordered:
        _check_against_config(who, mod, cfg, budget)
    return ordered


def _check_base_and_engine(who: str, modules: list[LoraModule], cfg: AdapterConfig, base: BaseFacts,
                           engine: EngineLora, budget: MatchBudget) -> tuple[str, ...]:
    """The weights against the base's layers and the engine's target filter; returns warnings."""
    if base.tensors is not None:  # a pickled base: its shapes are unknown here, vLLM checks them at load
        linear = base.linear_modules()
        if not any(cfg.targets(m, budget) for m in linear):
            names = sorted({m.rsplit(".", 1)[-1] for m in linear})
            raise AdapterError(f"{who}: target_modules {_short(cfg.target_regex or list(cfg.target_modules))} "
                               f"match no linear layer of the base (it has {', '.join(names)}): it would silently "
                               "serve the base model", code="no_target_match")
        for mod in modules:
            _check_against_base(who, mod, base, linear)
    return _check_engine_filter(who, modules, engine)


def _check_against_config(who: str, mod: LoraModule, cfg: AdapterConfig, budget: MatchBudget) -> None:
    """The config must describe its weights, or PEFT refuses to load the adapter and vLLM serves something else."""
    name = mod.module
    if mod.a is None or mod.b is None or len(mod.a) != 2 or len(mod.b) != 2:
        raise AdapterError(f"{who}: {_short(name)} lacks a 2-D lora_A or lora_B", code="shape_mismatch")
    rank = mod.a[0]
    if mod.b[1] != rank:
        raise AdapterError(f"{who}: {_short(name)} lora_A rank {rank} != lora_B rank {mod.b[1]}",
                           code="shape_mismatch")
    if not cfg.targets(name, budget):
        raise AdapterError(f"{who}: {WEIGHTS_NAME} has weights for {_short(name)}, which {CONFIG_NAME} does not "
                           f"target (target_modules {_short(cfg.target_regex or list(cfg.target_modules))}"
                           f"{', layers_to_transform ' + str(list(cfg.layers_to_transform)) if cfg.layers_to_transform else ''}"
                           "): PEFT would not load them", code="weights_untargeted")
    want = cfg.rank_for(name, budget)
    if rank != want:
        source = "its rank_pattern" if want != cfg.rank else f"r={cfg.rank}"
        raise AdapterError(f"{who}: {_short(name)} has LoRA rank {rank} in {WEIGHTS_NAME} but {CONFIG_NAME} gives "
                           f"it rank {want} ({source}): the config does not describe its weights",
                           code="shape_mismatch")


def _check_against_base(who: str, mod: LoraModule, base: BaseFacts, linear: dict[str, tuple[int, int]]) -> None:
    name = mod.module
    assert mod.a is not None and mod.b is not None  # _check_against_config ran first
    layer = base.layer_of(name)
    if name not in linear:
        if layer is not None and base.num_layers is not None and layer >= base.num_layers:
            raise AdapterError(f"{who}: weights for layer {layer} ({_short(name)}) but the base has "
                               f"{base.num_layers} layers: trained on another model", code="shape_mismatch")
        raise AdapterError(f"{who}: weights for {_short(name)}, which the base does not have", code="unknown_module")
    rank = mod.a[0]
    out_dim, in_dim = linear[name]
    if mod.embedding:  # lora_embedding_A: [r, vocab], lora_embedding_B: [hidden, r]
        if mod.a[1] != out_dim:
            raise AdapterError(f"{who}: {name} delta covers a vocabulary of {mod.a[1]}, the base has {out_dim}: "
                               "added tokens cannot be served", code="unsupported_modules")
        want = (in_dim, rank)
        got = mod.b
    else:
        want, got = (in_dim, out_dim), (mod.a[1], mod.b[0])
    if got != want:
        hidden = f" (base hidden_size {base.hidden_size})" if base.hidden_size else ""
        raise AdapterError(f"{who}: {name} expects in/out {want[0]}x{want[1]} from the base{hidden}, adapter has "
                           f"{got[0]}x{got[1]}: trained on another model size", code="shape_mismatch")


def _check_engine_filter(who: str, modules: list[LoraModule], engine: EngineLora) -> tuple[str, ...]:
    """``--lora-target-modules``: no module left is ``no_target_match``; some dropped is a warning."""
    if engine.target_modules is None:
        return ()
    packed = dict(engine.packed_modules)
    total: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for m in modules:
        suffix = m.module.rsplit(".", 1)[-1]
        total[suffix] = total.get(suffix, 0) + 1
        if not engine_keeps(m.module, engine.target_modules, packed):
            dropped[suffix] = dropped.get(suffix, 0) + 1
    flag = f"--lora-target-modules {_short(' '.join(engine.target_modules))}"
    if sum(dropped.values()) == len(modules):
        raise AdapterError(f"{who}: the engine's {flag} keeps none of its modules ({', '.join(sorted(dropped))}): "
                           "it would silently serve the base model", code="no_target_match")
    if dropped:
        parts = [s if n == total[s] else f"{s} ({n} of {total[s]})" for s, n in sorted(dropped.items())]
        return (f"{who}: the engine's {flag} drops its weights for {', '.join(parts)} (not served)",)
    return ()


def engine_keeps(module: str, targets: tuple[str, ...] | list[str] | None,
                 packed: Mapping[str, tuple[str, ...] | list[str]]) -> bool:
    """Does vLLM apply an adapter's weights for checkpoint module ``module`` under ``--lora-target-modules targets``?

    vLLM 0.32 filters runtime modules (``lora/utils.py`` ``is_in_target_modules``, called from
    ``LoRAModelManager._match_target_modules``): a checkpoint module packed into a runtime one (``q_proj`` into
    ``qkv_proj``) is served when its runtime module passes: its suffix or full name is listed, or, for a packed
    module, any of its parts is. Pure.
    """
    if targets is None:
        return True
    prefix, _, suffix = module.rpartition(".")
    parent = next((p for p, parts in packed.items() if suffix in parts), None)
    runtime = module if parent is None else f"{prefix}.{parent}" if prefix else parent
    return _is_in_target_modules(runtime, targets, packed)


def _is_in_target_modules(module_name: str, target_modules: tuple[str, ...] | list[str],
                          packed: Mapping[str, tuple[str, ...] | list[str]]) -> bool:
    """vLLM 0.32's ``vllm.lora.utils.is_in_target_modules``, line for line (importing it costs seconds more)."""
    target_module_set = set(target_modules)
    module_suffix = module_name.split(".")[-1]
    if module_suffix in target_module_set or module_name in target_module_set:
        return True
    if not packed:
        return False
    packed_children = packed.get(module_suffix)
    if packed_children and any(child in target_module_set for child in packed_children):
        return True
    return any(module_suffix in children and parent in target_module_set for parent, children in packed.items())


# -- where the adapter is and what base it declares ------------------------------------------------------------------


def _adapter_dir(who: str, registry: Registry, spec: AdapterSpec, root: Path | None) -> Path:
    """The adapter directory; ``AdapterError`` path_invalid, path_escape or path_missing."""
    try:
        path = registry.adapter_path(spec)
        if root is not None and not _inside(path, root):
            raise AdapterError(f"{who}: path {_short(str(spec.path))} resolves outside {root}", code="path_escape")
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise AdapterError(f"{who}: path {path} is not a directory", code="path_missing") from None
    except (ValueError, TypeError, OSError, RuntimeError) as exc:  # a NUL byte, a name too long, a symlink loop
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AdapterError(f"{who}: path {_short(str(spec.path))} is not usable ({detail})",
                           code="path_invalid") from None
    if not stat.S_ISDIR(st.st_mode):
        raise AdapterError(f"{who}: path {_short(str(path))} is not a directory", code="path_missing")
    return path


def _check_declared_base(who: str, spec: AdapterSpec, path: Path, base: BaseFacts) -> tuple[str | None, bool, tuple]:
    stamp = read_stamp(path, name=spec.name)
    if spec.base_fingerprint and stamp and spec.base_fingerprint != stamp:
        raise AdapterError(f"{who}: base_fingerprint {spec.base_fingerprint} (registered or requested) but "
                           f"{STAMP_NAME} says {stamp}",
                           code="base_conflict")
    declared = spec.base_fingerprint or stamp
    served = base.fingerprint.value
    if declared is None:
        if spec.allow_unverified_base:
            return None, False, (f"{who} declares no base; served on {served} unverified "
                                 "(allow_unverified_base: true)",)
        raise AdapterError(f"{who} does not declare the base it was trained on: run `tenantserve stamp {path} "
                           f"--base BASE_DIR` with the training base, or set base_fingerprint in the registry "
                           "(or allow_unverified_base: true to serve it anyway)", code="base_undeclared")
    if declared != served:
        raise AdapterError(f"{who} was trained on base {declared}, but the served base is {served}",
                           code="base_mismatch")
    return declared, True, ()


def _inside(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, top]) == top and real != top


def _one_line(exc: BaseException, width: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _short(value: object, width: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n").replace("\x00", "\\0")
    return text if len(text) <= width else text[: width - 3] + "..."
