from __future__ import annotations

from pathlib import Path

import pytest

from tenantserve.errors import RegistryError
from tenantserve.registry.schema import Registry
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


@pytest.mark.parametrize("tenant_id", ["admin", "anonymous", "other"])
def test_reserved_tenant_ids_are_refused(write_registry, tenant_id: str) -> None:
    data = {"base": {"name": "base", "path": "base"}, "tenants": [{"id": "acme"}, {"id": tenant_id}]}
    with pytest.raises(RegistryError, match=rf"adapters.yaml:\d+: tenants\[1\].id: tenant id '{tenant_id}' is reserved"):
        Registry.load(write_registry(data), check_paths=False)


def test_metric_placeholders_and_the_admin_label_are_reserved_ids() -> None:
    """Every label the middleware uses for non-tenants is a reserved id, so no tenant can be counted as one."""
    from tenantserve.middleware.policy import ADMIN
    from tenantserve.registry.metric_labels import ANONYMOUS_LABEL, OTHER_LABEL
    from tenantserve.registry.schema import RESERVED_TENANT_IDS

    assert {ANONYMOUS_LABEL, OTHER_LABEL, ADMIN.label} <= RESERVED_TENANT_IDS


@pytest.mark.parametrize("name", ["text", "image", "audio", "video", "input", "tool", "Text", "thinking"])
def test_adapter_names_vllm_matches_by_content_part_type_are_refused(write_registry, name: str) -> None:
    data = _reg()
    data["tenants"][0]["adapters"].append({"name": name, "path": "adapters/x"})
    with pytest.raises(RegistryError, match=rf"tenants\[0\].adapters\[1\].name: adapter name '{name}' is reserved"):
        Registry.load(write_registry(data), check_paths=False)


def test_reserved_adapter_names_cover_every_content_part_type_of_vllm() -> None:
    """Derived from vLLM itself: the prefix (before '_') of every chat content-part type its parser knows or its
    request schema declares, and every modality name (``--default-mm-loras`` keys)."""
    import typing

    from vllm.renderers import chat_utils

    from tenantserve.registry.schema import RESERVED_ADAPTER_NAMES

    types: set[str] = set(chat_utils.MM_PARSER_MAP) | set(chat_utils.TEXT_PART_TYPES)
    stack: list[object] = [chat_utils.ChatCompletionContentPartParam]
    while stack:
        node = stack.pop()
        if typing.get_origin(node) in (typing.Union, __import__("types").UnionType):
            stack.extend(typing.get_args(node))
        elif hasattr(node, "__annotations__") and "type" in getattr(node, "__annotations__", {}):
            hint = typing.get_type_hints(node, include_extras=True).get("type")
            literal = [a for a in typing.get_args(hint) if typing.get_origin(a) is typing.Literal] or [hint]
            for lit in literal:
                types.update(v for v in typing.get_args(lit) if isinstance(v, str))
    assert {"text", "image_url", "input_audio", "tool_reference"} <= types  # the walk found the schema
    prefixes = {t.split("_")[0] for t in types | set(typing.get_args(chat_utils.ModalityStr))}
    assert prefixes <= RESERVED_ADAPTER_NAMES, prefixes - RESERVED_ADAPTER_NAMES


@pytest.mark.parametrize("args", [["--default-mm-loras", '{"image": "/x"}'], ['--default-mm-loras={"audio": "/x"}'],
                                  ["--default_mm_loras", "{}"], ["--default-mm", "{}"], ["--DEFAULT-MM-LORAS", "{}"]])
def test_default_mm_loras_is_refused_in_extra_args(write_registry, make_adapter, args: list[str]) -> None:
    make_adapter("sql")
    with pytest.raises(RegistryError, match=r"adapters.yaml:\d+: engine: extra_args: .*--default-mm-loras\) is refused"):
        Registry.load(write_registry(_reg(extra_args=["--seed", "1", *args])))


def test_other_default_options_are_not_mistaken_for_default_mm_loras(write_registry, make_adapter) -> None:
    make_adapter("sql")
    reg = Registry.load(write_registry(_reg(extra_args=["--default-chat-template-kwargs", "{}"])))
    assert reg.engine.extra_args[0] == "--default-chat-template-kwargs"


@pytest.mark.parametrize("kind", ["sha256", "id"])
def test_the_same_key_in_two_tenants_is_refused_naming_both_places(write_registry, kind: str) -> None:
    first = {"id": "key-00000001", "sha256": "a" * 64, "created": "2026-01-01T00:00:00+00:00"}
    second = {"id": "key-00000002", "sha256": "b" * 64, "created": "2026-01-01T00:00:00+00:00"}
    second[kind] = first[kind]
    data = {"base": {"name": "base", "path": "base"},
            "tenants": [{"id": "acme", "api_keys": [first]}, {"id": "globex", "api_keys": [second]}]}
    path = write_registry(data)
    lines = path.read_text().splitlines()
    line_of = [i + 1 for i, text in enumerate(lines) if str(first[kind]) in text]
    assert len(line_of) == 2
    with pytest.raises(RegistryError) as refused:
        Registry.load(path, check_paths=False)
    message = str(refused.value)
    assert f"duplicate API key {kind}" in message
    assert f"tenants[0].api_keys[0].{kind} ({path}:{line_of[0]})" in message
    assert f"tenants[1].api_keys[0].{kind} ({path}:{line_of[1]})" in message


def test_the_same_key_twice_in_one_tenant_is_refused(write_registry) -> None:
    key = {"id": "key-00000001", "sha256": "a" * 64, "created": "2026-01-01T00:00:00+00:00"}
    data = {"base": {"name": "base", "path": "base"}, "tenants": [{"id": "acme", "api_keys": [key, dict(key)]}]}
    with pytest.raises(RegistryError, match=r"duplicate API key sha256"):
        Registry.load(write_registry(data), check_paths=False)
