"""What ``engine.extra_args`` tell vLLM, read the way vLLM 0.32's ``vllm serve`` parser reads them.

The launcher passes ``extra_args`` verbatim, so whatever they say about LoRA (``--lora-target-modules``,
``--max-lora-rank``, ...) is how the engine really runs: admission must judge adapters against that engine, not
against the registry's ``engine:`` section alone. ``parse_extra_args`` is the one place that reads them. Pure.

vLLM's parser (argparse, ``FlexibleArgumentParser``) accepts ``--flag value`` and ``--flag=value``, underscores for
dashes (``--max_loras``), ``--no-flag`` for booleans, and unique prefixes (``--max-lora-r 32``). The first three are
understood here; an abbreviation of a flag the launcher must understand is refused (write it in full), so nothing
the engine reads can slip past the checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tenantserve.errors import RegistryError
from tenantserve.registry.schema import ALLOWED_LORA_RANKS

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
