from pathlib import Path

import pytest

from tenantserve.registry.schema import Registry
from tenantserve.verify.prompts import PromptsError
from tenantserve.verify.run import VerifyRequest, companions_for, resolve_prompts
from tests.conftest import DEFAULT_REGISTRY

SERVED = ["demo-base", "sql", "pirate", "french"]


def test_an_adapter_is_mixed_with_the_base_and_the_adapters_that_fit_beside_it() -> None:
    reg = Registry.load(DEFAULT_REGISTRY)  # max_loras 2
    assert companions_for(reg, "sql", SERVED) == ["demo-base", "pirate"]
    assert companions_for(reg, "french", SERVED) == ["demo-base", "sql"]
    reg.engine.max_loras = 3
    reg.engine.max_cpu_loras = 4
    assert companions_for(reg, "pirate", SERVED) == ["demo-base", "sql", "french"]


def test_the_base_is_mixed_with_as_many_adapters_as_there_are_slots() -> None:
    reg = Registry.load(DEFAULT_REGISTRY)
    assert companions_for(reg, "demo-base", SERVED) == ["sql", "pirate"]


def test_only_models_the_engine_serves_are_companions() -> None:
    reg = Registry.load(DEFAULT_REGISTRY)
    assert companions_for(reg, "sql", ["sql", "french"]) == ["french"]


def test_default_prompt_set_lives_beside_the_registry(tmp_path: Path) -> None:
    reg = Registry.load(DEFAULT_REGISTRY)
    cases = resolve_prompts(VerifyRequest(model="sql", registry_path=DEFAULT_REGISTRY), reg)
    assert cases[0].prompt == "Table users(id,name). Query all names:"
    with pytest.raises(PromptsError, match="no prompt set for 'nobody'"):
        resolve_prompts(VerifyRequest(model="nobody", registry_path=DEFAULT_REGISTRY), reg)
    only_task = VerifyRequest(model="nobody", registry_path=DEFAULT_REGISTRY, lm_eval_task=tmp_path / "t.yaml")
    assert resolve_prompts(only_task, reg) == []
