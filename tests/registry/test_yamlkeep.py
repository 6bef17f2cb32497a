"""Programmatic registry writes keep a hand-written file's comments, and never change what the file means."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantserve.registry import keys
from tenantserve.registry.schema import AdapterSpec, Registry, TenantSpec
from tenantserve.registry.yamlkeep import merge_text

DEMO = Path(__file__).resolve().parents[2] / "configs" / "adapters.yaml"


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "adapters.yaml"
    path.write_text(DEMO.read_text())
    return path


def _comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line and "sha256:" not in line.split("#")[0]]


def test_sidecar_style_changes_keep_every_comment_that_still_has_its_line(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    before = path.read_text()
    reg = Registry.load(path, check_paths=False)
    reg.tenants.append(TenantSpec(id="hooli", adapters=[AdapterSpec(name="hooli-sql", path=Path("x"))]))
    keys.issue_key(reg.tenants[0])
    reg.engine.max_cpu_loras = 6
    reg.save(path)
    after = path.read_text()
    assert _comments(after) == _comments(before)  # header, knob explanations, security note, per-adapter notes
    assert "max_cpu_loras: 6                      # adapters kept in host memory" in after
    assert Registry.load(path, check_paths=False).model_dump() == reg.model_dump()
    # a new tenant is written in its minimal form: no default-valued keys appear anywhere
    assert "allow_base" not in after and "max_in_flight" not in after and "allow_unverified_base" not in after


def test_removing_a_tenant_removes_its_lines_and_only_those(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    before = path.read_text()
    reg = Registry.load(path, check_paths=False)
    reg.tenants = [t for t in reg.tenants if t.id != "globex"]
    reg.save(path)
    after = path.read_text()
    removed = list((Counter(before.splitlines()) - Counter(after.splitlines())).elements())
    assert len(removed) == 5 and all("globex" in line or "pirate" in line or "trained on" in line or
                                     line.strip() == "adapters:" for line in removed), removed
    assert Registry.load(path, check_paths=False).model_dump() == reg.model_dump()


def test_what_cannot_be_merged_is_written_plain_and_correct(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    reg = Registry.load(path, check_paths=False)
    reg.tenants.reverse()  # reordered list items: comments cannot follow safely
    reg.save(path)
    assert "# " not in path.read_text()
    assert Registry.load(path, check_paths=False).model_dump() == reg.model_dump()
    assert merge_text("- just\n- a list\n", {"a": 1}) is None
    assert merge_text("a: [\n", {"a": 1}) is None


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.tuples(st.sampled_from(["add_tenant", "drop_tenant", "add_adapter", "drop_adapter", "key",
                                           "revoke", "knob", "allow_base"]),
                          st.integers(0, 10)), max_size=12))
def test_any_sequence_of_changes_round_trips(tmp_path_factory, ops: list[tuple[str, int]]) -> None:
    path = _copy(tmp_path_factory.mktemp("keep"))
    header = path.read_text().splitlines()[0]
    for i, (op, n) in enumerate(ops):  # i makes every new tenant id and adapter name unique
        reg = Registry.load(path, check_paths=False)
        tenants = reg.tenants
        if op == "add_tenant":
            tenants.append(TenantSpec(id=f"t{n}-{i}"))
        elif op == "drop_tenant" and tenants:
            del tenants[n % len(tenants)]
        elif op == "add_adapter" and tenants:
            tenant = tenants[n % len(tenants)]
            tenant.adapters.append(AdapterSpec(name=f"a{n}-{i}", path=Path(f"adapters/{n}")))
        elif op == "drop_adapter" and tenants and tenants[n % len(tenants)].adapters:
            tenants[n % len(tenants)].adapters.pop(0)
        elif op == "key" and tenants:
            keys.issue_key(tenants[n % len(tenants)])
        elif op == "revoke" and tenants and tenants[n % len(tenants)].api_keys:
            tenant = tenants[n % len(tenants)]
            keys.revoke_key(tenant, tenant.api_keys[0].id)
        elif op == "knob":
            reg.engine.max_cpu_loras = 2 + n
        elif op == "allow_base" and tenants:
            tenants[n % len(tenants)].allow_base = not tenants[n % len(tenants)].allow_base
        reg.save(path)
        assert Registry.load(path, check_paths=False).model_dump() == reg.model_dump()
    assert path.read_text().splitlines()[0] == header  # the file's header comment survives everything
