"""The one registry update path: every change is validated, written atomically, keeps the operator's comments, and
costs what the change costs, not what the file costs. The splice's shortcut (checking only the rewritten regions)
is itself checked here against a parse of the whole text, on layouts an operator may write."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantserve.cli import main
from tenantserve.errors import RegistryError
from tenantserve.registry import keys, update
from tenantserve.registry.schema import AdapterSpec, Registry, TenantSpec
from tenantserve.registry.update import LoadedRegistry, RegistryWriteError, update_registry, validated
from tenantserve.registry.yamlkeep import splice_text
from tenantserve.registry.yamlpos import YamlDocument
from tenantserve.sidecar.store import RegistryStore

HEAD = """# the registry of a test fleet  (header comment)
version: 1
base:
  name: demo-base   # the base
  path: base
engine:
  max_loras: 2      # slots
  max_cpu_loras: 4  # host memory
# security comes next
security:
  auth: true
tenants:
"""


def fleet(tenants: int, *, column: int = 2, between: bool = True, quoted: bool = True) -> str:
    """An operator-written registry: comments on items and between them, quoted paths, items at ``column``."""
    pad = " " * column
    out = [HEAD]
    for i in range(tenants):
        if between and i % 3 == 1:
            out.append(f"{pad}# tenant {i} signed in March\n\n")
        path = f'"adapters/a{i}"' if quoted and i % 2 else f"adapters/a{i}"
        out.append(f"{pad}- id: t{i}        # customer {i}\n"
                   f"{pad}  adapters:\n"
                   f"{pad}    - name: a{i}\n"
                   f"{pad}      path: {path}   # where a{i} lives\n"
                   f"{pad}  api_keys:\n"
                   f"{pad}    - id: key-{i:08x}\n"
                   f"{pad}      sha256: {hashlib.sha256(str(i).encode()).hexdigest()}\n"
                   f"{pad}      created: 2026-01-01T00:00:00Z\n")
    return "".join(out)


def comments(text: str) -> Counter[str]:
    return Counter(line[line.index("#"):] for line in text.splitlines() if "#" in line)


OPS = st.sampled_from(["add_tenant", "drop_tenant", "add_adapter", "drop_adapter", "key", "revoke", "knob",
                       "allow_base", "limit", "pin"])


def apply(op: str, n: int, i: int, registry: Registry) -> None:
    """One change of the kinds the sidecar, ``keys`` and ``--pin`` make; ``i`` keeps new names unique."""
    tenants = registry.tenants
    tenant = tenants[n % len(tenants)] if tenants else None
    if op == "add_tenant":
        tenants.append(TenantSpec(id=f"n{n}-{i}", adapters=[AdapterSpec(name=f"n{n}-{i}", path=Path("x"))]))
    elif op == "drop_tenant" and len(tenants) > 1:
        del tenants[n % len(tenants)]
    elif op == "add_adapter" and tenant is not None:
        tenant.adapters.append(AdapterSpec(name=f"b{n}-{i}", path=Path(f"adapters/{n}")))
    elif op == "drop_adapter" and tenant is not None and tenant.adapters:
        tenant.adapters.pop(0)
    elif op == "key" and tenant is not None:
        keys.issue_key(tenant)
    elif op == "revoke" and tenant is not None and tenant.api_keys:
        keys.revoke_key(tenant, tenant.api_keys[0].id)
    elif op == "knob":
        registry.engine.max_cpu_loras = 2 + n
    elif op == "allow_base" and tenant is not None:
        tenant.allow_base = not tenant.allow_base
    elif op == "limit" and tenant is not None:
        tenant.max_in_flight = 1 + n
    elif op == "pin":
        registry.base.fingerprint = "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(tenants=st.integers(1, 7), column=st.sampled_from([0, 2, 4]), between=st.booleans(),
       ops=st.lists(st.tuples(OPS, st.integers(0, 9)), min_size=1, max_size=8))
def test_a_splice_means_what_it_claims_and_every_write_reloads_exactly(
        tmp_path_factory: pytest.TempPathFactory, tenants: int, column: int, between: bool,
        ops: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("upd") / "adapters.yaml"
    path.write_text(fleet(tenants, column=column, between=between))
    for i, (op, n) in enumerate(ops):
        old = LoadedRegistry.read(path)
        before = old.registry.model_dump(mode="json", exclude_none=True)
        intended = Registry.load(path, check_paths=False)
        apply(op, n, i, intended)
        intended = validated(intended)
        full = intended.model_dump(mode="json", exclude_none=True)
        minimal = intended.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        spliced = splice_text(old.document, old.text, before, full, minimal)
        if spliced is not None and spliced.data is not None:  # the shortcut's claim, against a whole parse
            assert YamlDocument.parse(spliced.text, source="s", error=RegistryError).data == spliced.data
        text_before = path.read_text()
        update_registry(path, lambda registry, op=op, n=n, i=i: apply(op, n, i, registry))
        after = Registry.load(path, check_paths=False).model_dump(mode="json", exclude_none=True)
        # what the file means is exactly the change (key ids and hashes are random: compare the rest)
        assert _no_key_secrets(after) == _no_key_secrets(full)
        assert path.read_text().splitlines()[0] == "# the registry of a test fleet  (header comment)"
        if op in ("key", "revoke", "knob", "allow_base", "limit", "add_tenant", "add_adapter", "pin"):
            assert not comments(text_before) - comments(path.read_text())  # nothing removed: every comment stays


def _no_key_secrets(data: dict) -> dict:
    for tenant in data.get("tenants", []):
        for key in tenant.get("api_keys", []):
            if not key["revoked"]:
                key.update(id="-", sha256="-", created="-")
    return data


def test_a_key_in_a_large_registry_changes_only_its_own_lines_and_parses_only_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "adapters.yaml"
    path.write_text(fleet(500))
    before = path.read_text()
    whole_parses = []
    monkeypatch.setattr(update, "means", lambda text, full: whole_parses.append(text) or False)
    update_registry(path, lambda registry: keys.issue_key(keys.find_tenant(registry, "t250")))
    after = path.read_text()
    assert whole_parses == []  # checked region by region: the cost follows the change, not the file
    added = list((Counter(after.splitlines()) - Counter(before.splitlines())).elements())
    removed = list((Counter(before.splitlines()) - Counter(after.splitlines())).elements())
    assert removed == [] and len(added) == 3 and added[0].strip().startswith("- id: key-"), added
    new, old = after.splitlines(), before.splitlines()
    at = new.index(added[0])
    assert new[at - 3].strip() == f"- id: key-{250:08x}"  # right after t250's first key
    assert new[:at] == old[:at] and new[at + 3:] == old[at:]  # every other line as it was, comments included
    reg = Registry.load(path, check_paths=False)
    assert len(keys.find_tenant(reg, "t250").api_keys) == 2 and len(reg.tenants) == 500


@pytest.mark.parametrize("layout", ["block scalar", "alias", "flow list", "empty list"])
def test_layouts_the_splice_does_not_prove_are_checked_whole(tmp_path: Path, layout: str) -> None:
    """Block scalars take in the blank lines after them and aliases reach across items: a region cannot be read on
    its own. The write must still mean exactly the change (the whole text is parsed, or ruamel merges it)."""
    text = fleet(4)
    if layout == "block scalar":
        text = text.replace('path: "adapters/a1"   # where a1 lives', "path: |-   # where a1 lives\n          adapters/a1\n")
    elif layout == "alias":
        text = text.replace("path: adapters/a0", "path: &shared adapters/a0").replace('path: "adapters/a3"',
                                                                                     "path: *shared")
    elif layout == "flow list":
        text = text.replace("tenants:\n", "tenants: [{id: solo}]\nx_unused:\n", 1).split("x_unused:")[0]
    else:
        text = text.split("tenants:")[0] + "tenants: []\n"
    path = tmp_path / "adapters.yaml"
    path.write_text(text)
    start = Registry.load(path, check_paths=False)
    if layout in ("block scalar", "alias"):
        assert not LoadedRegistry.read(path).document.local
    for change in (lambda r: r.tenants.append(TenantSpec(id="fresh")),
                   lambda r: keys.issue_key(r.tenants[0]),
                   lambda r: r.tenants.pop(0)):
        expected = Registry.load(path, check_paths=False)
        change(expected)
        update_registry(path, change)
        got = Registry.load(path, check_paths=False)
        assert _no_key_secrets(got.model_dump(mode="json")) == _no_key_secrets(expected.model_dump(mode="json"))
    assert start is not None and "# the registry of a test fleet" in path.read_text()


def test_an_invalid_change_is_refused_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "adapters.yaml"
    path.write_text(fleet(3))
    text = path.read_text()
    with pytest.raises(RegistryError, match="would make the registry invalid: tenant id 't1' appears twice"):
        update_registry(path, lambda r: r.tenants.append(TenantSpec(id="t1")))
    with pytest.raises(KeyError):  # the change's own error passes through, nothing written
        update_registry(path, lambda r: {}["missing"])
    assert path.read_text() == text


def _unwritable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", refuse)


def test_an_unwritable_registry_is_one_error_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same OSError is ``registry_unwritable`` from the function, the CLI (exit 2, one line) and the sidecar
    store (503); the file is unchanged each time."""
    path = tmp_path / "adapters.yaml"
    path.write_text(fleet(2))
    text = path.read_text()
    _unwritable(monkeypatch)
    with pytest.raises(RegistryWriteError) as info:
        update_registry(path, lambda r: keys.issue_key(r.tenants[0]))
    assert (info.value.code, info.value.http_status, info.value.exit_code) == ("registry_unwritable", 503, 2)
    assert "Read-only file system" in str(info.value) and str(path) in str(info.value)
    out = CliRunner().invoke(main, ["keys", "create", "--tenant", "t0", "--registry", str(path)])
    assert out.exit_code == 2, out.output
    assert "registry_unwritable" in out.output and "Traceback" not in out.output and "tsk-" not in out.output
    out = CliRunner().invoke(main, ["keys", "revoke", "--tenant", "t0", "key-00000000", "--registry", str(path)])
    assert out.exit_code == 2 and "registry_unwritable" in out.output
    store = RegistryStore(path)
    with pytest.raises(RegistryWriteError) as info:
        asyncio.run(store.mutate(lambda r: r.tenants.append(TenantSpec(id="t9"))))
    assert info.value.code == "registry_unwritable" and info.value.http_status == 503
    assert path.read_text() == text
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temp file is cleaned up


def test_a_lock_that_cannot_be_created_is_unwritable(tmp_path: Path) -> None:
    path = tmp_path / "adapters.yaml"
    path.write_text(fleet(1))
    (tmp_path / ".adapters.yaml.lock").mkdir()  # something in the lock's place: it cannot be opened
    with pytest.raises(RegistryWriteError) as info:
        update_registry(path, lambda r: keys.issue_key(r.tenants[0]))
    assert info.value.code == "registry_unwritable" and "lock" in str(info.value)


def test_the_store_remembers_a_broken_file_met_by_a_write(tmp_path: Path) -> None:
    path = tmp_path / "adapters.yaml"
    path.write_text(fleet(2))
    store = RegistryStore(path)
    asyncio.run(store.mutate(lambda r: keys.issue_key(r.tenants[0])))
    assert store.error is None and store.last_good is not None and store.generation == 1
    path.write_text(path.read_text().replace("adapters:", "adaptrs:", 1))
    with pytest.raises(RegistryError, match="adaptrs"):
        asyncio.run(store.mutate(lambda r: keys.issue_key(r.tenants[0])))
    assert store.error is not None and "adaptrs" in store.error and store.generation == 1
    assert [t.id for t in store.last_good.tenants] == ["t0", "t1"]
