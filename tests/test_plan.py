from __future__ import annotations

import pytest
from click.testing import CliRunner

from tenantserve.cli.plan import command
from tenantserve.memory import GIB, LLAMA2_7B_BYTES, MIB, LinearShapes, llama2_7b_shapes
from tenantserve.plan import PlanInput, gpus_for_base, make_plan
from tests.conftest import DEFAULT_REGISTRY


def test_llama2_7b_rank16_adapter_is_the_labs_32_mib() -> None:
    plan = make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES))
    assert plan.adapter_bytes == 32 * MIB  # 32 layers x 4 modules x 16 x (4096 + 4096) x 2 bytes
    assert round(LLAMA2_7B_BYTES / GIB, 2) == 12.55


def test_slot_reservation_covers_every_linear_layer_at_max_rank() -> None:
    plan = make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES, max_loras=8, max_lora_rank=16))
    per_layer = 16 * ((4096 + 4096) * 4 + (4096 + 11008) * 2 + (11008 + 4096))
    assert plan.slot_bytes == 8 * 32 * per_layer * 2


def test_consolidation_saves_gpus() -> None:
    plan = make_plan(PlanInput(shapes=llama2_7b_shapes(), base_bytes=LLAMA2_7B_BYTES, tenants=40, tenants_per_engine=16))
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
    assert shapes.shapes["k_proj"] == (64, 32) and shapes.shapes["q_proj"] == (64, 64) and shapes.layers == 3
