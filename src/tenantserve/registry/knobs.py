"""The engine knobs a registry sets, resolved once for the launcher, ``check`` and the sidecar. Pure.

One home for: the ranks vLLM accepts (``ALLOWED_LORA_RANKS``), the slot rank derived from the served adapters
(``derive_max_lora_rank``), ``engine.extra_args`` read the way vLLM 0.32's ``vllm serve`` parser reads them
(``parse_extra_args``), and the merge of ``engine:`` with them (``resolve_knobs`` -> ``ResolvedKnobs`` ->
``EngineLora``, the engine's LoRA settings admission judges against).

Which adapters a derived rank is derived from is one policy for everyone: the admitted ones
(``tenantserve.admission.judge.admit_adapters``); a refused adapter never widens the slots.

The launcher passes ``extra_args`` verbatim, so whatever they say about LoRA (``--lora-target-modules``,
``--max-lora-rank``, ...) is how the engine really runs: admission must judge adapters against that engine, not
against the registry's ``engine:`` section alone. vLLM's parser (argparse, ``FlexibleArgumentParser``) accepts
``--flag value`` and ``--flag=value``, underscores for dashes (``--max_loras``), ``--no-flag`` for booleans, and
unique prefixes (``--max-lora-r 32``). The first three are understood here; an abbreviation of a flag the launcher
must understand is refused (write it in full), so nothing the engine reads can slip past the checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tenantserve.errors import AdapterError, RegistryError

if TYPE_CHECKING:  # the registry's models import this module for the ranks
    from tenantserve.registry.schema import Registry

#: The ranks vLLM 0.32 accepts for ``--max-lora-rank``.
ALLOWED_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: vLLM's ``packed_modules_mapping`` for the Llama family (Llama, Mistral, Qwen2, ...): the runtime module that
#: carries each checkpoint module's LoRA (``q_proj`` weights are applied inside ``qkv_proj``).
LLAMA_PACKED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
    ("gate_up_proj", ("gate_proj", "up_proj")),
)


@dataclass(frozen=True)
class EngineLora:
    """The engine's LoRA settings as the launcher resolves them (exactly what ``vllm serve`` is given).

    ``max_lora_rank`` / ``max_loras`` / ``max_cpu_loras`` / ``lora_dtype``: ``--max-lora-rank`` (one of
    ``ALLOWED_LORA_RANKS``), ``--max-loras``, ``--max-cpu-loras`` (None: vLLM's default, ``max_loras``),
    ``--lora-dtype`` ("auto", "float16", "bfloat16"). ``target_modules``: the module names of
    ``--lora-target-modules`` (None: the flag is absent, every supported module gets LoRA).
    ``max_position_embeddings``: the base's (vLLM's adapter reader records it, checks nothing with it; None is
    fine; ``BaseFacts.max_position_embeddings`` has it). ``packed_modules``: the
    served architecture's vLLM ``packed_modules_mapping`` (default: the Llama family's).
    """

    max_lora_rank: int
    max_loras: int = 1
    max_cpu_loras: int | None = None
    lora_dtype: str = "auto"
    target_modules: tuple[str, ...] | None = None
    max_position_embeddings: int | None = None
    packed_modules: tuple[tuple[str, tuple[str, ...]], ...] = LLAMA_PACKED


@dataclass(frozen=True)
class ResolvedKnobs:
    """Engine knobs after defaults and derivations: what vLLM actually runs with, from ``engine:`` or from
    ``engine.extra_args`` (``from_extra_args`` names those: the launcher passes them verbatim, never twice)."""

    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    rank_derived: bool
    target_modules: tuple[str, ...] | None = None  # --lora-target-modules: LoRA only on these module suffixes
    lora_dtype: str = "auto"
    from_extra_args: frozenset[str] = frozenset()

    def lora_config(self, max_lora_rank: int | None = None) -> EngineLora:
        """The engine's LoRA settings, as admission judges adapters against them. ``max_lora_rank``: instead of
        this one (the launcher's first pass when the rank is derived)."""
        return EngineLora(max_lora_rank=max_lora_rank or self.max_lora_rank, max_loras=self.max_loras,
                          max_cpu_loras=self.max_cpu_loras, lora_dtype=self.lora_dtype,
                          target_modules=self.target_modules)


def derive_max_lora_rank(ranks: Sequence[int]) -> int:
    """Smallest rank vLLM accepts that holds every adapter (a slot is sized for the largest). ``ranks``: each
    served adapter's largest rank (``AdapterConfig.max_rank``: ``rank_pattern`` included); none: 1.

    Raises ``AdapterError`` (``rank_too_high``) above the largest rank vLLM accepts."""
    largest = max(ranks, default=1)
    for allowed in ALLOWED_LORA_RANKS:
        if allowed >= largest:
            return allowed
    raise AdapterError(
        f"adapter rank {largest} exceeds the largest max_lora_rank vLLM supports ({ALLOWED_LORA_RANKS[-1]})",
        code="rank_too_high",
    )


def engine_extra_args(registry: Registry) -> ExtraArgs:
    """The knobs ``engine.extra_args`` set, refusing any also set under ``engine:`` (both places named).

    Raises ``RegistryError`` (exit 2)."""
    engine = registry.engine
    extra = parse_extra_args(engine.extra_args)
    source = f"{registry.source}: " if registry.source is not None else ""
    for knob in ("max_loras", "max_lora_rank", "max_cpu_loras", "max_model_len", "dtype"):
        if knob in extra and knob in engine.model_fields_set and getattr(engine, knob) is not None:
            raise RegistryError(f"{source}{knob} is set twice: engine.{knob} ({getattr(engine, knob)}) and "
                                f"{extra.where[knob]}: keep one")
    return extra


def resolve_knobs(registry: Registry, ranks: Mapping[str, int]) -> ResolvedKnobs:
    """Merge ``engine:`` and ``engine.extra_args``, check the served adapters' ranks against the slots and fill in
    derived knobs. ``ranks``: {adapter name: largest rank} of the adapters the engine will serve (the admitted
    ones; ``{}`` validates the engine section alone).

    Raises ``RegistryError`` for a knob set in both places or ``max_cpu_loras < max_loras``, ``AdapterError``
    (``rank_too_high``) for an adapter above an explicit ``max_lora_rank`` or above every rank vLLM accepts.
    """
    engine = registry.engine
    extra = engine_extra_args(registry)
    max_loras = int(extra.get("max_loras", engine.max_loras))  # type: ignore[arg-type]
    explicit: int | None = extra.get("max_lora_rank", engine.max_lora_rank)  # type: ignore[assignment]
    if explicit is None:
        max_rank, derived = derive_max_lora_rank(list(ranks.values())), True
    else:
        max_rank, derived = explicit, False
        too_high = [(name, r) for name, r in ranks.items() if r > max_rank]
        if too_high:
            name, rank = too_high[0]
            raise AdapterError(
                f"adapter '{name}' has rank {rank} > max_lora_rank {max_rank}: raise engine.max_lora_rank to "
                f"{derive_max_lora_rank([rank])} or retrain the adapter with r <= {max_rank}",
                code="rank_too_high",
            )
    max_cpu = extra.get("max_cpu_loras", engine.max_cpu_loras)
    if max_cpu is None:  # vLLM's own default for an explicit `--max-cpu-loras None` is max_loras
        max_cpu = max_loras if "max_cpu_loras" in extra else max(max_loras, len(ranks))
    if max_cpu < max_loras:  # type: ignore[operator]
        where = extra.where.get("max_cpu_loras", "engine.max_cpu_loras")
        raise RegistryError(f"max_cpu_loras {max_cpu} ({where}) must be >= max_loras {max_loras} "
                            "(every adapter in a slot is also held in host memory)")
    targets = extra.get("target_modules")
    return ResolvedKnobs(max_loras, max_rank, int(max_cpu), derived,  # type: ignore[arg-type]
                         target_modules=tuple(targets) if targets is not None else None,  # type: ignore[arg-type]
                         lora_dtype=str(extra.get("lora_dtype", "auto")),
                         from_extra_args=frozenset(extra.values))


def engine_lora(registry: Registry, max_lora_rank: int) -> EngineLora:
    """The running engine's LoRA settings for a registry whose slot rank is known (the sidecar's view): the same
    resolution of ``engine:`` and ``engine.extra_args`` as the launch. Raises ``RegistryError`` like it."""
    return resolve_knobs(registry, {}).lora_config(max_lora_rank)


# -- engine.extra_args, read as vLLM reads them ----------------------------------------------------------------------

Kind = Literal["int", "optint", "rank", "dtype", "modules", "bool", "text"]

#: vLLM 0.32's LoRA flags (vllm/engine/arg_utils.py, group "LoRAConfig") -> (knob, kind). Booleans also take
#: ``--no-<flag>``. ``tests/engine/test_launch_extra_args.py`` compares this table with vLLM's own parser.
LORA_FLAGS: dict[str, tuple[str, Kind]] = {
    "--enable-lora": ("enable_lora", "bool"),
    "--max-loras": ("max_loras", "int"),
    "--max-lora-rank": ("max_lora_rank", "rank"),
    "--lora-dtype": ("lora_dtype", "dtype"),
    "--enable-tower-connector-lora": ("enable_tower_connector_lora", "bool"),
    "--max-cpu-loras": ("max_cpu_loras", "optint"),
    "--fully-sharded-loras": ("fully_sharded_loras", "bool"),
    "--lora-target-modules": ("target_modules", "modules"),
    "--specialize-active-lora": ("specialize_active_lora", "bool"),
    "--enable-mixed-moe-lora-format": ("enable_mixed_moe_lora_format", "bool"),
    "--enable-moe-shared-loras": ("enable_moe_shared_loras", "bool"),
    "--max-lora-cls-labels": ("max_lora_cls_labels", "optint"),
}

#: Other flags that set a knob the registry's ``engine:`` section also has.
KNOB_FLAGS: dict[str, tuple[str, Kind]] = {
    "--dtype": ("dtype", "text"),
    "--max-model-len": ("max_model_len", "text"),
}

#: Flags refused in ``extra_args``, and why: the launcher sets them itself, or they would bypass the registry.
RESERVED_FLAGS: dict[str, str] = {
    "--host": "the address is `tenantserve launch --host` (checked against security.auth)",
    "--port": "the port is `tenantserve launch --port`",
    "--served-model-name": "the base's OpenAI name is base.name",
    "--lora-modules": "adapters are registered under a tenant (tenants[].adapters), where they are admitted and "
                      "access-controlled",
    "--default-mm-loras": "it applies one adapter to every tenant's requests that carry a modality",
    "--no-enable-lora": "tenantserve serves adapters: LoRA is always on",
    "--config": "a vLLM config file would hide engine arguments from the launcher's checks; list them in "
                "engine.extra_args",
    "--lora-extra-vocab-size": "vLLM 0.32 has no such flag (extra vocabularies were removed)",
}

#: Values vLLM's ``--lora-dtype`` accepts.
LORA_DTYPES = ("auto", "bfloat16", "float16")


@dataclass(frozen=True)
class ExtraArgs:
    """The knobs ``extra_args`` set: ``values`` by knob name (vLLM's ``LoRAConfig`` field names, plus ``dtype`` and
    ``max_model_len``), and ``where`` each was found, for error messages (``engine.extra_args[3] ('--max-loras')``)."""

    values: dict[str, object] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)

    def get(self, knob: str, default: object = None) -> object:
        return self.values.get(knob, default)

    def __contains__(self, knob: str) -> bool:
        return knob in self.values


def parse_extra_args(extra_args: Sequence[str]) -> ExtraArgs:
    """Read the knobs ``engine.extra_args`` set. Pure.

    Raises ``RegistryError`` (exit 2) naming ``engine.extra_args[i]`` for a reserved flag, a knob given twice, an
    abbreviated knob flag, a missing or invalid value.
    """
    owned = {**LORA_FLAGS, **KNOB_FLAGS}
    negated = {f"--no-{flag[2:]}": knob for flag, (knob, kind) in LORA_FLAGS.items() if kind == "bool"}
    every = set(owned) | set(negated) | set(RESERVED_FLAGS)
    out = ExtraArgs()
    i = 0
    while i < len(extra_args):
        token = extra_args[i]
        place = f"engine.extra_args[{i}] ({token!r})"
        if not token.startswith("--") or token == "--":
            i += 1
            continue
        flag, eq, inline = token.partition("=")
        flag = "--" + flag[2:].replace("_", "-")
        if flag in RESERVED_FLAGS:
            raise RegistryError(f"{place}: {flag} is not allowed in engine.extra_args: {RESERVED_FLAGS[flag]}")
        if flag not in every and (full := sorted(f for f in every if f.startswith(flag))):
            raise RegistryError(f"{place}: an abbreviation of {', '.join(full)}: write the flag in full, so the "
                                "launcher checks what the engine runs with")
        if flag in negated or (flag in owned and owned[flag][1] == "bool"):
            if eq:
                raise RegistryError(f"{place}: {flag} takes no value (write {flag} or --no-{flag[2:]})")
            knob, value, i = negated.get(flag) or owned[flag][0], flag not in negated, i + 1
        elif flag in owned:
            knob, kind = owned[flag]
            if eq:
                values, i = [inline], i + 1
            else:
                n = 1
                while i + n < len(extra_args) and not extra_args[i + n].startswith("-") and (kind == "modules" or n == 1):
                    n += 1
                values, i = list(extra_args[i + 1 : i + n]), i + n
            if not values or values == [""]:
                raise RegistryError(f"{place}: {flag} needs a value")
            value = _value(place, flag, kind, values)
        else:
            i += 1
            continue
        if knob in out.values:
            raise RegistryError(f"{place}: {knob} is already set by {out.where[knob]}: give it once")
        out.values[knob] = value
        out.where[knob] = place
    return out


def _value(place: str, flag: str, kind: Kind, values: list[str]) -> object:
    raw = values[0]
    if kind == "modules":
        return tuple(values)
    if kind == "text":
        return raw
    if kind == "dtype":
        if raw not in LORA_DTYPES:
            raise RegistryError(f"{place}: {flag} {raw!r} is not one of {', '.join(LORA_DTYPES)}")
        return raw
    if kind == "optint" and raw == "None":
        return None
    try:
        number = int(raw)
    except ValueError:
        raise RegistryError(f"{place}: {flag} needs a whole number, not {raw!r}") from None
    if kind == "rank" and number not in ALLOWED_LORA_RANKS:
        raise RegistryError(f"{place}: {flag} {number} is not one vLLM accepts "
                            f"({', '.join(map(str, ALLOWED_LORA_RANKS))})")
    if number < 1:
        raise RegistryError(f"{place}: {flag} must be >= 1, not {number}")
    return number
