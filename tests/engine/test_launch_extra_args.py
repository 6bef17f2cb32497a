"""``engine.extra_args`` read the way vLLM 0.32 reads them: every LoRA flag, in every spelling vLLM accepts, becomes
a resolved knob (the engine as configured), and a knob set twice is a registry error naming both places."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tenantserve.engine.launch import build_serve_argv
from tenantserve.errors import RegistryError
from tenantserve.registry.knobs import KNOB_FLAGS, LORA_FLAGS, RESERVED_FLAGS, parse_extra_args, resolve_knobs
from tenantserve.registry.schema import Registry


@pytest.mark.parametrize(("args", "want"), [
    (["--lora-target-modules", "down_proj"], {"target_modules": ("down_proj",)}),
    (["--lora-target-modules=down_proj"], {"target_modules": ("down_proj",)}),
    (["--lora-target-modules", "q_proj", "v_proj", "--seed", "1"], {"target_modules": ("q_proj", "v_proj")}),
    (["--lora_target_modules", "o_proj"], {"target_modules": ("o_proj",)}),
    (["--max-loras", "4", "--max-lora-rank=32", "--max_cpu_loras", "9"],
     {"max_loras": 4, "max_lora_rank": 32, "max_cpu_loras": 9}),
    (["--max-cpu-loras", "None"], {"max_cpu_loras": None}),
    (["--lora-dtype", "bfloat16"], {"lora_dtype": "bfloat16"}),
    (["--lora-dtype=float16"], {"lora_dtype": "float16"}),
    (["--fully-sharded-loras", "--no-specialize-active-lora"],
     {"fully_sharded_loras": True, "specialize_active_lora": False}),
    (["--enable-lora"], {"enable_lora": True}),
    (["--max-lora-cls-labels", "3"], {"max_lora_cls_labels": 3}),
    (["--dtype", "float16", "--max-model-len=128"], {"dtype": "float16", "max_model_len": "128"}),
    (["--seed", "1", "--gpu-memory-utilization", "0.3", "--enforce-eager"], {}),
])
def test_every_spelling_becomes_the_same_knob(args: list[str], want: dict) -> None:
    assert parse_extra_args(args).values == want


@pytest.mark.parametrize(("args", "message"), [
    (["--max-loras", "2", "--max_loras=3"], r"engine.extra_args\[2\] \('--max_loras=3'\): max_loras is already set by "
                                            r"engine.extra_args\[0\]"),
    (["--max-lora-r", "32"], r"an abbreviation of --max-lora-rank: write the flag in full"),
    (["--lora-target", "down_proj"], r"an abbreviation of --lora-target-modules"),
    (["--max-lora", "8"], r"an abbreviation of --max-lora-cls-labels, --max-lora-rank, --max-loras"),
    (["--max-lora-rank", "12"], r"--max-lora-rank 12 is not one vLLM accepts"),
    (["--max-loras", "two"], r"--max-loras needs a whole number, not 'two'"),
    (["--max-loras", "0"], r"--max-loras must be >= 1"),
    (["--max-loras"], r"--max-loras needs a value"),
    (["--lora-target-modules", "--seed", "1"], r"--lora-target-modules needs a value"),
    (["--lora-target-modules="], r"--lora-target-modules needs a value"),
    (["--lora-dtype", "float32"], r"--lora-dtype 'float32' is not one of auto, bfloat16, float16"),
    (["--fully-sharded-loras=true"], r"--fully-sharded-loras takes no value"),
    (["--lora-modules", '{"name": "x", "path": "/tmp/x"}'], r"adapters are registered under a tenant"),
    (["--lora_modules=x=/tmp/x"], r"--lora-modules is not allowed"),
    (["--no-enable-lora"], r"LoRA is always on"),
    (["--config", "vllm.yaml"], r"a vLLM config file would hide engine arguments"),
    (["--host", "0.0.0.0"], r"--host is not allowed"),
    (["--port=9"], r"--port is not allowed"),
    (["--served-model-name", "x"], r"base.name"),
    (["--lora-extra-vocab-size", "256"], r"vLLM 0.32 has no such flag"),
])
def test_refused_extra_args_name_their_place(args: list[str], message: str) -> None:
    with pytest.raises(RegistryError, match=message) as info:
        parse_extra_args(args)
    assert info.value.exit_code == 2


def _registry(tmp_path: Path, engine: dict) -> Registry:
    (tmp_path / "base").mkdir(exist_ok=True)
    data = {"base": {"name": "b", "path": "base"}, "engine": engine,
            "tenants": [{"id": "acme", "adapters": [{"name": "sql", "path": "adapters/sql"}]}]}
    return Registry.parse(json.dumps(data), root=tmp_path)


@pytest.mark.parametrize(("knob", "value", "flag"), [
    ("max_loras", 2, ["--max-loras", "4"]), ("max_lora_rank", 8, ["--max-lora-rank=16"]),
    ("max_cpu_loras", 4, ["--max_cpu_loras", "8"]), ("max_model_len", 64, ["--max-model-len", "32"]),
    ("dtype", "float32", ["--dtype=float16"]),
])
def test_a_knob_in_both_places_is_a_registry_error_naming_both(tmp_path: Path, knob: str, value: object,
                                                               flag: list[str]) -> None:
    reg = _registry(tmp_path, {knob: value, "extra_args": ["--seed", "1", *flag]})
    with pytest.raises(RegistryError) as info:
        resolve_knobs(reg, {"sql": 8})
    assert info.value.exit_code == 2
    assert f"{knob} is set twice: engine.{knob} ({value}) and engine.extra_args[2] ({flag[0]!r})" in str(info.value)


def test_extra_args_knobs_are_resolved_and_passed_once(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"extra_args": ["--max-loras=3", "--max-lora-rank", "32", "--lora-target-modules",
                                              "down_proj", "o_proj", "--lora-dtype", "float16"]})
    knobs = resolve_knobs(reg, {"sql": 8})
    assert (knobs.max_loras, knobs.max_lora_rank, knobs.rank_derived, knobs.max_cpu_loras) == (3, 32, False, 3)
    assert (knobs.target_modules, knobs.lora_dtype) == (("down_proj", "o_proj"), "float16")
    argv = build_serve_argv(reg, knobs, host="127.0.0.1", port=1, device="cpu", python="py")
    flags = [a.split("=")[0] for a in argv if a.startswith("--")]
    assert flags.count("--max-loras") == 1 and flags.count("--max-lora-rank") == 1
    assert argv[-8:] == reg.engine.extra_args  # verbatim, last
    assert argv[argv.index("--max-cpu-loras") + 1] == "3"  # the launcher's own, from the resolved max_loras


def test_max_cpu_loras_below_max_loras_across_places(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"max_cpu_loras": 2, "extra_args": ["--max-loras", "4"]})
    with pytest.raises(RegistryError, match=r"max_cpu_loras 2 \(engine.max_cpu_loras\) must be >= max_loras 4"):
        resolve_knobs(reg, {})


def test_rank_from_extra_args_bounds_the_adapters(tmp_path: Path) -> None:
    reg = _registry(tmp_path, {"extra_args": ["--max-lora-rank", "8"]})
    from tenantserve.errors import AdapterError

    with pytest.raises(AdapterError, match="rank 16 > max_lora_rank 8"):
        resolve_knobs(reg, {"sql": 16})


# -- against vLLM's own parser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_parser():
    from tenantserve.engine.entry import patch_version

    patch_version()
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


def _options(parser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def test_the_flag_table_is_vllms_lora_group(vllm_parser) -> None:
    """A vLLM upgrade that adds, renames or drops a LoRA flag fails here."""
    [group] = [g for g in vllm_parser._action_groups if g.title == "LoRAConfig"]
    theirs = {o for a in group._group_actions for o in a.option_strings if not o.startswith("--no-")}
    assert theirs == set(LORA_FLAGS) | {"--default-mm-loras"}
    assert set(KNOB_FLAGS) | {"--host", "--port", "--served-model-name", "--lora-modules", "--config"} <= _options(
        vllm_parser)
    assert "--lora-extra-vocab-size" not in _options(vllm_parser)


def test_no_real_vllm_flag_is_taken_for_an_abbreviation(vllm_parser) -> None:
    """Only prefixes of the launcher's own flags are refused as abbreviations: none may be a real vLLM flag."""
    ours = set(LORA_FLAGS) | set(KNOB_FLAGS) | set(RESERVED_FLAGS)
    clashes = sorted(o for o in _options(vllm_parser) if o not in ours and any(f.startswith(o) for f in ours))
    assert clashes == []
    for option in sorted(_options(vllm_parser) - ours):
        parse_extra_args([option, "1"])  # every other vLLM flag passes through untouched


@pytest.mark.parametrize("args", [
    ["--lora-target-modules", "down_proj"], ["--lora_target_modules=q_proj"],
    ["--lora-target-modules", "q_proj", "v_proj", "--seed", "3"], ["--max-loras=4", "--max_lora_rank", "64"],
    ["--max-cpu-loras", "None"], ["--lora-dtype=bfloat16", "--fully-sharded-loras"],
    ["--no-fully-sharded-loras", "--max-lora-cls-labels", "2"],
])
def test_our_reading_equals_vllms(vllm_parser, args: list[str]) -> None:
    ns = vllm_parser.parse_args(["model", *args])
    ours = parse_extra_args(args).values
    for knob, value in ours.items():
        theirs = getattr(ns, "lora_target_modules" if knob == "target_modules" else knob)
        assert (tuple(theirs) if isinstance(theirs, list) else theirs) == value, knob


def test_max_cpu_loras_none_in_extra_args_is_vllms_default(tmp_path: Path) -> None:
    """vLLM reads `--max-cpu-loras None` as "max_loras"; without the flag the launcher passes every adapter."""
    knobs = resolve_knobs(_registry(tmp_path, {"max_loras": 2, "extra_args": ["--max-cpu-loras", "None"]}),
                          {"a": 8, "b": 8, "c": 8})
    assert knobs.max_cpu_loras == 2 and "max_cpu_loras" in knobs.from_extra_args
    assert resolve_knobs(_registry(tmp_path, {"max_loras": 2}), {"a": 8, "b": 8, "c": 8}).max_cpu_loras == 3
