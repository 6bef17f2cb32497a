from __future__ import annotations

import pytest
from click.testing import CliRunner

from tenantserve.cli.plan import command
from tenantserve.planning.memory import (
    ALL_LINEAR_MODULES,
    DTYPE_BYTES,
    GIB,
    LLAMA2_7B_BYTES,
    MIB,
    LinearShapes,
    llama2_7b_shapes,
    registry_plan_values,
    slot_bytes,
)
from tenantserve.planning.plan import PlanInput, Sourced, choose_inputs, gpus_for_base, make_plan
from tenantserve.registry.schema import Registry
from tests.conftest import DEFAULT_REGISTRY


def test_llama2_7b_rank16_adapter_is_the_labs_32_mib() -> None:
    plan = make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES))
    assert plan.adapter_bytes == 32 * MIB  # 32 layers x 4 modules x 16 x (4096 + 4096) x 2 bytes
    assert round(LLAMA2_7B_BYTES / GIB, 2) == 12.55


def test_slot_reservation_covers_every_linear_layer_and_the_vocabulary_at_max_rank() -> None:
    plan = make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES, max_loras=8, max_lora_rank=16))
    per_layer = 16 * ((4096 + 4096) * 4 + (4096 + 11008) * 2 + (11008 + 4096))
    embed_and_head = 2 * 16 * (32000 + 4096)
    assert plan.slot_bytes == 8 * (32 * per_layer + embed_and_head) * 2


def test_slot_bytes_of_the_embedded_model_are_what_its_engine_allocated() -> None:
    # measured by memprobe on configs/adapters.yaml (max_loras 2, r 8, float32): 655,360 B in the blocks'
    # qkv/o/gate_up/down slots, 73,728 B each for embed_tokens and lm_head (tests/integration/test_plan_engine.py)
    shapes = LinearShapes.from_model_dir(Registry.load(DEFAULT_REGISTRY).base_path)
    assert slot_bytes(shapes, 2, 8, 4) == (655_360, 2 * 73_728)


def test_consolidation_saves_gpus() -> None:
    plan = make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES, tenants=40,
                               tenants_per_engine=16))
    assert plan.dedicated_gpus == 40 and plan.consolidated_engines == 3 and plan.consolidated_gpus == 3
    assert plan.gpus_saved == 37
    assert 0 < plan.kv_bytes_per_engine < 80 * GIB


def test_base_larger_than_one_gpu_needs_several() -> None:
    assert gpus_for_base(140 * GIB, 80 * GIB, 0.9) == 3
    assert gpus_for_base(12 * GIB, 80 * GIB, 0.9) == 1


@pytest.mark.parametrize(("kwargs", "message"), [({"adapter_rank": 32}, "adapter rank 32 > max_lora_rank 16"),
                                                 ({"max_cpu_loras": 2}, "max_cpu_loras 2 < max_loras 8")])
def test_impossible_plans_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES, **kwargs))


def test_cli_reference_plan_and_bad_input() -> None:
    res = CliRunner().invoke(command, ["--tenants", "10"])
    assert res.exit_code == 0 and "32.00 MiB" in res.output and "GPUs saved" in res.output
    bad = CliRunner().invoke(command, ["--rank", "64"])
    assert bad.exit_code == 2 and "adapter rank 64 > max_lora_rank 16" in bad.output


def test_cli_reconciles_registry_adapters_with_disk() -> None:
    res = CliRunner().invoke(command, ["--registry", str(DEFAULT_REGISTRY)], terminal_width=200)
    assert res.exit_code == 0, res.output
    ratios = [float(line.split("│")[-2]) for line in res.output.splitlines() if line.count("│") == 6]
    assert len(ratios) >= 3 and all(1.0 <= r < 1.1 for r in ratios), res.output


def test_shapes_from_config_with_gqa() -> None:
    shapes = LinearShapes.from_config({"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
                                       "head_dim": 32, "intermediate_size": 128, "num_hidden_layers": 3})
    # (out, in), as nn.Linear.weight: k_proj maps hidden 64 to one kv head of 32, down_proj intermediate 128 to 64
    assert shapes.shapes["k_proj"] == (32, 64) and shapes.shapes["q_proj"] == (64, 64) and shapes.layers == 3
    assert shapes.shapes["down_proj"] == (64, 128) and shapes.shapes["gate_proj"] == (128, 64)


def test_lab_figures_one_adapter_is_a_four_hundredth_of_the_base() -> None:
    plan = make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES))
    assert plan.adapter_bytes == 32 * MIB
    assert 395 <= LLAMA2_7B_BYTES / plan.adapter_bytes <= 405  # the lab's "1/400 of the 12.55 GiB base"


def test_inputs_come_from_options_then_registry_then_reference() -> None:
    chosen = choose_inputs({"tenants": 7, "adapter_rank": None}, {"tenants": 3, "adapter_rank": 8, "max_loras": 2})
    assert chosen["tenants"] == Sourced(7, "option")
    assert chosen["adapter_rank"] == Sourced(8, "registry") and chosen["max_loras"] == Sourced(2, "registry")
    assert chosen["max_cpu_loras"] == Sourced(40, "reference")
    assert all(s.source == "reference" for s in choose_inputs({}, None).values())


def test_registry_values_are_its_tenants_adapters_and_engine() -> None:
    reg = Registry.load(DEFAULT_REGISTRY)
    values = registry_plan_values(reg)
    assert values["tenants"] == len(reg.tenants) and values["max_loras"] == reg.engine.max_loras
    assert values["max_cpu_loras"] == reg.engine.max_cpu_loras
    assert values["dtype_bytes"] == DTYPE_BYTES[reg.engine.dtype]
    assert values["adapter_rank"] == 8
    assert set(values["target_modules"]) == set(ALL_LINEAR_MODULES)  # type: ignore[arg-type]


def rows(output: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in output.splitlines()
            if (cells := [c.strip() for c in line.split("│")[1:-1]]) and cells[0]}


def test_cli_plans_the_registry_and_says_where_each_value_comes_from() -> None:
    reg = Registry.load(DEFAULT_REGISTRY)
    res = CliRunner().invoke(command, ["--registry", str(DEFAULT_REGISTRY), "--tenants", "9"], terminal_width=200)
    assert res.exit_code == 0, res.output
    table = rows(res.output)
    assert table["tenants"] == ["9", "option"]
    assert table["max_loras"] == [str(reg.engine.max_loras), "registry"]
    assert table["dtype_bytes"] == [str(DTYPE_BYTES[reg.engine.dtype]), "registry"]
    assert f"slot reservation ({reg.engine.max_loras} x r=8, every linear layer, embed, lm_head)" in res.output
    assert "9 tenants on demo-base" in res.output and "40 tenants" not in res.output
    bad = CliRunner().invoke(command, ["--registry", str(DEFAULT_REGISTRY), "--rank", "16"])
    assert bad.exit_code == 2 and "adapter rank 16 > max_lora_rank 8" in bad.output


def test_shapes_from_config_are_the_served_bases_weight_shapes() -> None:
    """Planning and admission describe a layer the same way: (out, in), as the base's own ``nn.Linear`` weights."""
    from tenantserve.admission.served_base import BaseFacts

    base_path = Registry.load(DEFAULT_REGISTRY).base_path
    shapes = LinearShapes.from_model_dir(base_path)
    linear = BaseFacts.read(base_path).linear_modules()
    block = {name.rsplit(".", 1)[-1]: shape for name, shape in linear.items() if ".layers.0." in name}
    assert set(shapes.shapes) <= set(block)
    assert {m: block[m] for m in shapes.shapes} == shapes.shapes
    assert any(out != in_ for out, in_ in shapes.shapes.values())  # not all square: the order is really checked
