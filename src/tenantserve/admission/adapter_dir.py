"""What an adapter directory says about itself: PEFT's ``adapter_config.json``, the base it declares (the stamp file
``tenantserve stamp`` writes), its LoRA tensors and the bytes of its weights."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tenantserve.admission.weights import TensorInfo, read_bounded
from tenantserve.errors import AdapterError
from tenantserve.registry.schema import atomic_write_text

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: Written next to the adapter by ``tenantserve stamp``: the fingerprint of the base it was trained on.
STAMP_NAME = "tenantserve-base.json"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")

#: PEFT writes ~2 KiB; a config listing every module of a 70B model by full name stays far below this.
CONFIG_LIMIT = 1 << 20
STAMP_LIMIT = 64 << 10
#: One tenant-written regex (target_modules, a rank_pattern key) and the time all matching of one adapter may take:
#: PEFT and vLLM run these patterns over every module name, a pathological one (``(a+)+$``) would hang them.
PATTERN_LIMIT = 4096
MATCH_SECONDS = 2.0
#: PEFT's shorthand for "every linear layer but the output layer".
ALL_LINEAR = "all-linear"
_PEFT_LAYER_INDEX = r".*?\.[^.]*\.(?P<idx>\d+)\."


class MatchBudget:
    """A deadline for matching tenant-written regexes; ``AdapterError`` (config_invalid) once it is spent.

    Uses the ``regex`` module (vLLM's own, for rank patterns) because it can stop a match that runs too long.
    """

    def __init__(self, who: str, seconds: float = MATCH_SECONDS) -> None:
        self.who = who
        self.deadline = time.monotonic() + seconds

    def search(self, compiled: Any, name: str, *, full: bool) -> bool:
        """Does ``compiled`` (a ``regex`` pattern) match ``name`` (``full``: the whole of it, else from its start)?
        ``AdapterError`` (config_invalid) when the budget runs out first."""
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            found = compiled.fullmatch(name, timeout=left) if full else compiled.match(name, timeout=left)
        except TimeoutError:
            raise AdapterError(f"{self.who}: the pattern {_short(compiled.pattern)} in {CONFIG_NAME} takes too "
                               f"long to match module names (over {MATCH_SECONDS:g} s): PEFT and vLLM would hang on "
                               "it", code="config_invalid") from None
        return found is not None


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of a PEFT LoRA config that serving depends on, validated as far as reading can tell."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    peft_type: str
    declared_base: str | None
    modules_to_save: tuple[str, ...]
    raw: dict
    target_regex: str | None = None  # target_modules given as one regex (PEFT: full match of the module name)
    rank_pattern: tuple[tuple[str, int], ...] = ()  # in the file's order: the first matching key wins
    layers_to_transform: tuple[int, ...] | None = None
    exclude_modules: tuple[str, ...] | str | None = None
    _compiled: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def max_rank(self) -> int:
        """The rank a slot must hold: the largest of ``r`` and the ``rank_pattern`` values (vLLM's rule in
        ``PEFTHelper.validate_legal``, even for a pattern that matches no module). The one definition: admission
        refuses weights whose rank differs from what this config gives their module (``shape_mismatch``), so no
        admitted tensor is ever larger."""
        return max([self.rank, *(r for _, r in self.rank_pattern)])

    @property
    def all_linear(self) -> bool:
        """``target_modules: "all-linear"`` (PEFT's shorthand, any case)."""
        return isinstance(self.target_regex, str) and self.target_regex.lower() == ALL_LINEAR

    def targets(self, module: str, budget: MatchBudget | None = None) -> bool:
        """Does PEFT apply this config to ``module`` (a base module name like ``model.layers.0.self_attn.q_proj``)?

        PEFT's rules (``check_target_module_exists``): ``exclude_modules`` first; a string is a full regex match
        (``all-linear``: every linear layer but ``lm_head``), a list matches the name or a ``.``-suffix of it and is
        then narrowed by ``layers_to_transform``.
        """
        budget = budget or MatchBudget(f"adapter config {CONFIG_NAME}")
        if self.exclude_modules:
            if isinstance(self.exclude_modules, str):
                if budget.search(self._regex(self.exclude_modules), module, full=True):
                    return False
            elif _suffix_match(module, self.exclude_modules):
                return False
        if self.all_linear:  # PEFT expands it to the nn.Linear layers; the embeddings are not linear
            return module.rsplit(".", 1)[-1] not in ("lm_head", "embed_tokens")
        if self.target_regex is not None:
            return budget.search(self._regex(self.target_regex), module, full=True)
        if module in self.target_modules:
            return True
        if not _suffix_match(module, self.target_modules):
            return False
        if self.layers_to_transform is None:
            return True
        m = re.match(_PEFT_LAYER_INDEX, module)
        return m is not None and int(m["idx"]) in self.layers_to_transform

    def rank_for(self, module: str, budget: MatchBudget | None = None) -> int:
        """The rank PEFT (and vLLM's ``PEFTHelper.get_rank_and_scaling``) gives ``module``: the first
        ``rank_pattern`` key that matches a ``.``-suffix of the name, else ``r``."""
        budget = budget or MatchBudget(f"adapter config {CONFIG_NAME}")
        for key, rank in self.rank_pattern:
            if budget.search(self._regex(rf"(.*\.)?({key})$"), module, full=False):
                return rank
        return self.rank

    def _regex(self, pattern: str) -> Any:
        compiled = self._compiled.get(pattern)
        if compiled is None:
            compiled = self._compiled[pattern] = _compile(pattern)
        return compiled

    @classmethod
    def read(cls, adapter_dir: Path, *, name: str | None = None) -> AdapterConfig:
        """Read (at most ``CONFIG_LIMIT`` bytes) and validate ``adapter_config.json``; raise ``AdapterError``
        (config_missing, config_unreadable, config_too_large, config_invalid, path_invalid, file_not_regular)
        naming the adapter."""
        who = f"adapter '{name}'" if name else f"adapter at {adapter_dir}"
        path = adapter_dir / CONFIG_NAME
        try:
            data = read_bounded(path, CONFIG_LIMIT, who=who, too_large="config_too_large",
                                unreadable="config_unreadable")
        except FileNotFoundError:
            raise AdapterError(f"{who}: {CONFIG_NAME} not found in {adapter_dir}", code="config_missing") from None
        try:
            raw = json.loads(data)
        except UnicodeDecodeError:
            raise AdapterError(f"{who}: {CONFIG_NAME} is not UTF-8 text", code="config_invalid") from None
        except json.JSONDecodeError as exc:
            raise AdapterError(
                f"{who}: {CONFIG_NAME} is not valid JSON (line {exc.lineno}: {exc.msg})", code="config_invalid"
            ) from None
        except RecursionError:
            raise AdapterError(f"{who}: {CONFIG_NAME} nests too deeply", code="config_invalid") from None
        if not isinstance(raw, dict):
            raise AdapterError(f"{who}: {CONFIG_NAME} must hold a JSON object", code="config_invalid")
        return cls.parse(raw, who=who)

    @classmethod
    def parse(cls, raw: dict, *, who: str) -> AdapterConfig:
        """Validate a config already decoded (pure): every field serving reads, by type and range."""
        def invalid(what: str) -> AdapterError:
            return AdapterError(f"{who}: {CONFIG_NAME} {what}", code="config_invalid")

        rank = raw.get("r")
        if not _positive_int(rank):
            raise invalid(f"has no valid rank 'r' (got {_short(rank)})")
        alpha = raw.get("lora_alpha", rank)
        if not _finite(alpha):
            raise invalid(f"lora_alpha must be a finite number (got {_short(alpha)})")
        targets = raw.get("target_modules")
        regex = targets if isinstance(targets, str) else None
        if targets is None:
            targets = ()
        elif isinstance(targets, str):
            targets = (targets,)
        if not isinstance(targets, list | tuple) or not all(isinstance(t, str) for t in targets):
            raise invalid("target_modules must be a list of module names or one regex")
        pattern = raw.get("rank_pattern") or {}
        if not isinstance(pattern, dict) or not all(_positive_int(v) for v in pattern.values()):
            raise invalid("rank_pattern must map module names to positive integer ranks")
        alphas = raw.get("alpha_pattern") or {}
        if not isinstance(alphas, dict) or not all(_finite(v) for v in alphas.values()):
            raise invalid("alpha_pattern must map module names to finite numbers")
        layers = raw.get("layers_to_transform")
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        if layers is not None and not (isinstance(layers, list) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in layers)):
            raise invalid("layers_to_transform must be a layer index or a list of them")
        exclude = raw.get("exclude_modules")
        if exclude is not None and not isinstance(exclude, str) and not (
                isinstance(exclude, list) and all(isinstance(t, str) for t in exclude)):
            raise invalid("exclude_modules must be a list of module names or one regex")
        to_save = raw.get("modules_to_save")
        if isinstance(to_save, str):
            to_save = [to_save]
        if to_save is not None and not (isinstance(to_save, list) and all(isinstance(t, str) for t in to_save)):
            raise invalid("modules_to_save must be a list of module names")
        compiled: dict = {}
        keys = [*pattern, *alphas]
        for key in keys:
            compiled[rf"(.*\.)?({key})$"] = _compile(rf"(.*\.)?({key})$", who=who, what=f"pattern key {key!r}")
        for text, what in ((regex, "target_modules"), (exclude if isinstance(exclude, str) else None,
                                                       "exclude_modules")):
            if text is not None and text.lower() != ALL_LINEAR:
                compiled[text] = _compile(text, who=who, what=what)
        peft_type, base = raw.get("peft_type", ""), raw.get("base_model_name_or_path")
        return cls(
            rank=rank,
            alpha=float(alpha),
            target_modules=tuple(sorted(targets)),
            peft_type=peft_type if isinstance(peft_type, str) else repr(peft_type),
            declared_base=base if isinstance(base, str) else None,
            modules_to_save=tuple(to_save or ()),
            raw=raw,
            target_regex=regex,
            rank_pattern=tuple(pattern.items()),
            layers_to_transform=tuple(layers) if layers else None,
            exclude_modules=exclude if isinstance(exclude, str) else tuple(exclude) if exclude else None,
            _compiled=compiled,
        )


def _compile(pattern: str, *, who: str = "adapter", what: str = "pattern") -> Any:
    import regex  # vLLM's regex engine (a vLLM dependency): matches can be stopped by a timeout

    if len(pattern) > PATTERN_LIMIT:
        raise AdapterError(f"{who}: {CONFIG_NAME} {what} is longer than {PATTERN_LIMIT} characters",
                           code="config_invalid")
    try:
        return regex.compile(pattern)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise AdapterError(f"{who}: {CONFIG_NAME} {what} is not a valid regex: {_short(str(exc))}",
                           code="config_invalid") from None


def _suffix_match(module: str, names: tuple[str, ...] | list[str]) -> bool:
    return any(module == t or module.endswith("." + t) for t in names)


def _finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def weight_files(model_dir: Path) -> list[Path]:
    """The top-level weight files of a model or adapter directory (``WEIGHT_SUFFIXES``), sorted by name. Raises
    ``OSError`` when the directory cannot be listed."""
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def bytes_on_disk(model_dir: Path) -> int:
    """Bytes of the weight files of a model or adapter directory (``weight_files``). Raises ``OSError``."""
    return sum(p.stat().st_size for p in weight_files(model_dir))


# -- the declared base ---------------------------------------------------------------------------------------------


def read_stamp(adapter_dir: Path, *, name: str | None = None) -> str | None:
    """The base fingerprint recorded by ``tenantserve stamp``, or None when the adapter has no stamp.

    ``AdapterError``: stamp_invalid, stamp_too_large (over ``STAMP_LIMIT`` bytes), path_invalid."""
    path = adapter_dir / STAMP_NAME
    who = f"adapter '{name}'" if name else f"adapter at {adapter_dir}"
    try:
        data = json.loads(read_bounded(path, STAMP_LIMIT, who=who, too_large="stamp_too_large",
                                       unreadable="stamp_invalid"))
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError) as exc:
        raise AdapterError(f"{who}: cannot read {STAMP_NAME}: {_short(str(exc))}", code="stamp_invalid") from None
    value = data.get("base_fingerprint") if isinstance(data, dict) else None
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise AdapterError(f"{who}: {STAMP_NAME} has no valid base_fingerprint (sha256:<64 hex>)",
                           code="stamp_invalid")
    return value


def write_stamp(adapter_dir: Path, base_fingerprint: str, *, base_name: str | None = None) -> Path:
    """Record the base an adapter was trained on (for training pipelines); written atomically; returns the stamp
    file's path. ``AdapterError``: stamp_invalid (not ``sha256:<64 hex>``), or what ``AdapterConfig.read`` raises
    when ``adapter_dir`` is not an adapter; ``OSError`` when it cannot be written."""
    if not _FINGERPRINT.match(base_fingerprint):
        raise AdapterError(f"not a fingerprint: {base_fingerprint!r}", code="stamp_invalid")
    AdapterConfig.read(adapter_dir)  # only stamp what is an adapter
    data = {
        "base_fingerprint": base_fingerprint,
        "base_name": base_name,
        "stamped_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = adapter_dir / STAMP_NAME
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


# -- LoRA tensors ----------------------------------------------------------------------------------------------------

_LORA_SUFFIX = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight"
                          r"|lora_embedding_A|lora_embedding_B)$")
#: PEFT's in-memory names carry the adapter's name (``.lora_A.default.weight``); ``save_pretrained`` strips it.
_NAMED_ADAPTER = re.compile(r"\.(?:lora_A|lora_B)\.(?P<adapter>[^.]+)\.weight$|\.lora_embedding_[AB]\.(?P<emb>[^.]+)$")


@dataclass(frozen=True)
class LoraModule:
    """One adapted module of the base: its A and B matrices' shapes (None when missing). For a linear layer of
    weight (out, in): ``a`` is (rank, in), ``b`` (out, rank), as PEFT saves them; for an embedding
    (``embedding``): ``a`` is (rank, vocab), ``b`` (hidden, rank)."""

    module: str
    a: tuple[int, ...] | None
    b: tuple[int, ...] | None
    embedding: bool


def lora_modules(tensors: dict[str, TensorInfo]) -> tuple[dict[str, LoraModule], list[str]]:
    """Group a checkpoint's tensors by adapted module; also return the tensor names that are not LoRA A/B."""
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    other: list[str] = []
    for name, info in tensors.items():
        if name.endswith((".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")):
            continue  # vLLM ignores these copies of the base's own embeddings
        m = _LORA_SUFFIX.match(name)
        if m is None:
            other.append(name)
            continue
        parts.setdefault(m["module"], {})[m["part"]] = info.shape
    modules = {
        mod: LoraModule(
            mod,
            p.get("lora_A.weight") or p.get("lora_embedding_A"),
            p.get("lora_B.weight") or p.get("lora_embedding_B"),
            embedding="lora_embedding_A" in p or "lora_embedding_B" in p,
        )
        for mod, p in parts.items()
    }
    return modules, sorted(other)


def adapter_name_segments(names: list[str]) -> set[str]:
    """The PEFT adapter names (``default``) found inside tensor names: weights saved from ``model.state_dict()``
    instead of ``save_pretrained``, which neither PEFT nor vLLM loads."""
    found = set()
    for name in names:
        if m := _NAMED_ADAPTER.search(name):
            found.add(m["adapter"] or m["emb"])
    return found
