from __future__ import annotations

from pathlib import Path

import pytest

from tenantserve.errors import RegistryError
from tenantserve.registry import Registry
from tests.conftest import DEFAULT_REGISTRY


def _reg(**engine: object) -> dict:
    return {
        "base": {"name": "base", "path": "base"},
        "engine": {"max_loras": 2, **engine},
        "tenants": [{"id": "acme", "adapters": [{"name": "sql", "path": "adapters/sql"}]}],
    }


def test_default_registry_loads_and_resolves_paths() -> None:
    reg = Registry.load(DEFAULT_REGISTRY)
    assert reg.base.name == "demo-base"
    assert reg.engine.max_loras == 2
    assert reg.base_path == (DEFAULT_REGISTRY.parent / "../models/embedded/base").resolve()
    names = [a.name for _, a in reg.adapters()]
    assert "sql" in names and len(names) >= 3


def test_valid_registry_roundtrips_through_atomic_save(write_registry, make_adapter, tmp_path: Path) -> None:
    make_adapter("sql")
    path = write_registry(_reg())
    reg = Registry.load(path)
    out = tmp_path / "copy" / "adapters.yaml"
    reg.save(out)
    again = Registry.parse(out.read_text(), root=tmp_path)
    assert again.model_dump() == reg.model_dump()
    assert [p.name for p in out.parent.iterdir()] == ["adapters.yaml"]  # no temp file left behind


def test_malformed_yaml_names_the_line(write_registry) -> None:
    path = write_registry("base:\n  name: base\n  path: [unclosed\n")
    with pytest.raises(RegistryError, match=r"adapters\.yaml:\d+: malformed YAML"):
        Registry.load(path)


def test_unknown_key_names_key_and_line(write_registry, make_adapter) -> None:
    make_adapter("sql")
    data = _reg()
    data["engine"]["max_lora"] = 3  # typo of max_loras
    path = write_registry(data)
    with pytest.raises(RegistryError, match=r"adapters\.yaml:\d+: engine\.max_lora: unknown key 'max_lora'"):
        Registry.load(path)


def test_duplicate_yaml_key_is_refused(write_registry) -> None:
    path = write_registry("base:\n  name: a\n  path: base\nbase:\n  name: b\n  path: base\n")
    with pytest.raises(RegistryError, match=r":4: duplicate key 'base' \(first at line 1\)"):
        Registry.load(path)


def test_duplicate_adapter_names_across_tenants(write_registry, make_adapter) -> None:
    make_adapter("sql")
    data = _reg()
    data["tenants"].append({"id": "globex", "adapters": [{"name": "sql", "path": "adapters/sql"}]})
    with pytest.raises(RegistryError, match=r"duplicate adapter name 'sql' \(tenants acme and globex\)"):
        Registry.load(write_registry(data))


def test_duplicate_tenant_ids(write_registry, make_adapter) -> None:
    make_adapter("sql")
    data = _reg()
    data["tenants"].append({"id": "acme"})
    with pytest.raises(RegistryError, match="tenant id 'acme' appears twice"):
        Registry.load(write_registry(data))


def test_adapter_named_like_the_base_is_refused(write_registry) -> None:
    data = _reg()
    data["tenants"][0]["adapters"][0]["name"] = "base"
    with pytest.raises(RegistryError, match="is the base model's name"):
        Registry.load(write_registry(data), check_paths=False)


def test_missing_adapter_path_names_adapter(write_registry) -> None:
    with pytest.raises(RegistryError, match=r"adapter 'sql' \(tenant acme\): path .*adapters/sql is not a directory"):
        Registry.load(write_registry(_reg()))


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="registry file not found"):
        Registry.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"max_loras": 0}, r"engine\.max_loras: Input should be greater than or equal to 1"),
        ({"max_lora_rank": 12}, r"max_lora_rank 12 is not one vLLM accepts \(1, 8, 16"),
        ({"max_cpu_loras": 1}, r"max_cpu_loras 1 must be >= max_loras 2"),
        ({"dtype": "int4"}, r"engine\.dtype: invalid value 'int4'"),
    ],
)
def test_invalid_knobs(write_registry, make_adapter, engine: dict, message: str) -> None:
    make_adapter("sql")
    with pytest.raises(RegistryError, match=message):
        Registry.load(write_registry(_reg(**engine)))


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "x" * 200, "sql\u2024v2", "bad name"])
def test_adapter_names_are_restricted(write_registry, name: str) -> None:
    data = _reg()
    data["tenants"][0]["adapters"][0]["name"] = name
    with pytest.raises(RegistryError, match=r"tenants\[0\]\.adapters\[0\]\.name: invalid value"):
        Registry.load(write_registry(data), check_paths=False)


def test_registry_must_be_a_mapping(write_registry) -> None:
    with pytest.raises(RegistryError, match="must be a mapping"):
        Registry.load(write_registry("- just\n- a list\n"))
