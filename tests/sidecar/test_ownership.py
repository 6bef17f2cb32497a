"""The path-ownership rule: runtime onboarding reads a tenant's adapters only from ``<root>/<tenant>/...``.

Pure rule first (``requested_dir``, ``check`` on hand-made layouts), then the real sidecar over HTTP with no engine
behind it: every refusal happens before the engine is contacted, and changes neither the registry nor anything else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tenantserve.errors import TenantserveError
from tenantserve.registry.schema import Registry
from tenantserve.sidecar.ownership import Layout, check, inspect, requested_dir, tenant_folder
from tests.sidecar.serving import SidecarThread

ROOT = Path("/srv/adapters")


def _code(fn: Callable[[], object]) -> str:
    with pytest.raises(TenantserveError) as info:
        fn()
    return info.value.code


# -- the pure rule ---------------------------------------------------------------------------------------------------

def test_relative_paths_resolve_inside_the_tenant_folder_and_absolute_ones_must_lie_there() -> None:
    folder = tenant_folder(ROOT, "acme")
    assert folder == Path("/srv/adapters/acme")
    assert requested_dir(folder, "sql/v1") == folder / "sql" / "v1"
    assert requested_dir(folder, "./sql/../sql") == folder / "sql"
    assert requested_dir(folder, "/srv/adapters/acme/sql") == folder / "sql"
    assert requested_dir(folder, ".") == folder
    for escaping in ("../globex/sql", "/srv/adapters/globex/sql", "/srv/adapters/acme-x/sql", "/etc", "sql/../../x"):
        assert _code(lambda p=escaping: requested_dir(folder, p)) == "path_escape", escaping
    assert _code(lambda: requested_dir(folder, "sql\x00")) == "path_invalid"


def test_check_refuses_links_out_of_the_folder_and_overlaps_with_other_tenants() -> None:
    ok = Layout("/r/acme", "/r/acme/sql", (("adapter_config.json", "/r/acme/sql/adapter_config.json"),
                                          ("adapter_model.safetensors", "/r/acme/shared/w.safetensors")))
    check("a", ok, [("globex", "/r/globex/pirate")])  # a link that stays inside the folder is fine
    moved = Layout("/r/acme", "/r/globex/pirate")
    assert _code(lambda: check("a", moved, ())) == "path_escape"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tenantserve-base.json", "sub"):
        leak = Layout("/r/acme", "/r/acme/sql", ((name, "/r/globex/pirate/" + name),))
        assert _code(lambda lay=leak: check("a", lay, ())) == "path_escape", name
    # an operator put globex's adapter inside acme's folder: acme may not onboard it, around it, or below it
    for directory in ("/r/acme/shared", "/r/acme", "/r/acme/shared/sub"):
        assert _code(lambda d=directory: check("a", Layout("/r/acme", d), [("globex", "/r/acme/shared")])) \
            == "path_owned", directory
    into = Layout("/r/acme", "/r/acme/sql", (("adapter_model.safetensors", "/r/acme/shared/w"),))
    assert _code(lambda: check("a", into, [("globex", "/r/acme/shared")])) == "path_owned"
    assert check("a", Layout("/r/acme", "/r/acme/shared-2"), [("globex", "/r/acme/shared")]) is None  # prefix only


def test_inspect_follows_every_link_below_the_directory(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    (folder / "sql" / "sub").mkdir(parents=True)
    (folder / "sql" / "sub" / "deep").symlink_to(tmp_path / "elsewhere")
    (folder / "sql" / "w").symlink_to(folder / "shared" / "w")
    layout = inspect(folder, folder / "sql")
    assert layout.directory == os.path.realpath(folder / "sql")
    assert dict(layout.entries)[os.path.join("sub", "deep")] == os.path.realpath(tmp_path / "elsewhere")
    assert dict(layout.entries)["w"] == os.path.realpath(folder / "shared" / "w")
    assert _code(lambda: check("a", layout, ())) == "path_escape"


# -- the sidecar (no engine: every refusal happens before it would be contacted) ------------------------------------

@pytest.fixture
def adapters(sidecar: SidecarThread, tmp_path: Path, make_adapter: Callable[..., Path]) -> Path:
    """acme (registered) and globex (added here), each with an adapter in its own folder under the root."""
    root = sidecar.config.adapters_root
    for tenant, name in (("acme", "mine"), ("globex", "pirate")):
        d = make_adapter(f"{tenant}/{name}")
        (d / "adapter_model.safetensors").write_bytes(b"weights of " + tenant.encode())
        (d / "tenantserve-base.json").write_text(json.dumps({"base_fingerprint": "sha256:" + "0" * 64}))
    with sidecar.client() as c:
        assert c.post("/admin/tenants", json={"id": "globex"}).status_code == 201
    return root


def _post(sidecar: SidecarThread, tenant: str, path: str, name: str = "new"):  # type: ignore[no-untyped-def]
    with sidecar.client() as c:
        return c.post(f"/admin/tenants/{tenant}/adapters", json={"name": name, "path": path})


def _refused(sidecar: SidecarThread, tenant: str, path: str, status: int, code: str) -> str:
    before = sidecar.config.registry_path.read_text()
    resp = _post(sidecar, tenant, path)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text
    assert sidecar.config.registry_path.read_text() == before
    return resp.json()["error"]["message"]


def test_a_weights_link_to_another_tenants_adapter_is_path_escape(sidecar: SidecarThread, adapters: Path) -> None:
    """The issue's case: acme's folder holds its own config but links globex's fine-tune."""
    for name in ("adapter_model.safetensors", "adapter_config.json", "tenantserve-base.json"):
        d = adapters / "acme" / f"steal-{name.split('.')[0]}"
        d.mkdir()
        for own in ("adapter_config.json", "adapter_model.safetensors", "tenantserve-base.json"):
            if own != name:
                (d / own).write_bytes((adapters / "acme" / "mine" / own).read_bytes())
        (d / name).symlink_to(adapters / "globex" / "pirate" / name)
        assert name in _refused(sidecar, "acme", d.name, 400, "path_escape")
    (adapters / "acme" / "linked-dir").symlink_to(adapters / "globex" / "pirate", target_is_directory=True)
    _refused(sidecar, "acme", "linked-dir", 400, "path_escape")
    (adapters / "acme" / "with-sub").mkdir()
    (adapters / "acme" / "with-sub" / "extra").symlink_to("/etc", target_is_directory=True)
    _refused(sidecar, "acme", "with-sub", 400, "path_escape")
    (adapters / "acme" / "dangling").mkdir()
    (adapters / "acme" / "dangling" / "adapter_model.safetensors").symlink_to(adapters / "globex" / "later")
    _refused(sidecar, "acme", "dangling", 400, "path_escape")


def test_paths_outside_the_tenant_folder_are_refused_before_anything_is_read(
    sidecar: SidecarThread, adapters: Path
) -> None:
    _refused(sidecar, "acme", "../globex/pirate", 400, "path_escape")
    _refused(sidecar, "acme", str(adapters / "globex" / "pirate"), 400, "path_escape")
    _refused(sidecar, "acme", str(adapters.parent / "base"), 400, "path_escape")
    _refused(sidecar, "globex", str(adapters / "acme" / "mine"), 400, "path_escape")
    _refused(sidecar, "acme", "/", 400, "path_escape")


def test_links_that_stay_inside_the_folder_pass_the_rule(sidecar: SidecarThread, adapters: Path) -> None:
    """Relative and absolute forms of the same folder, and a weights link into the tenant's own folder, all get past
    the ownership rule: what refuses them is admission (these test weights are not a safetensors file)."""
    (adapters / "acme" / "v2").mkdir()
    (adapters / "acme" / "v2" / "adapter_config.json").symlink_to(adapters / "acme" / "mine" / "adapter_config.json")
    (adapters / "acme" / "v2" / "adapter_model.safetensors").symlink_to("../mine/adapter_model.safetensors")
    for path in ("v2", str(adapters / "acme" / "v2"), "mine", "./mine/../v2"):
        resp = _post(sidecar, "acme", path)
        assert resp.status_code == 400 and resp.json()["error"]["code"] not in ("path_escape", "path_owned"), resp.text


def test_a_folder_registered_to_another_tenant_cannot_be_onboarded(sidecar: SidecarThread, adapters: Path) -> None:
    """The operator registered (by hand) a globex adapter that lives in acme's folder: acme may not register that
    folder, one above it, or one below it; a folder beside it is fine."""
    shared = adapters / "acme" / "shared"
    shared.mkdir()
    (shared / "sub").mkdir()
    data = yaml.safe_load(sidecar.config.registry_path.read_text())
    next(t for t in data["tenants"] if t["id"] == "globex")["adapters"] = [{"name": "g", "path": str(shared)}]
    sidecar.config.registry_path.write_text(yaml.safe_dump(data))
    for path in ("shared", ".", "shared/sub"):
        assert "globex" in _refused(sidecar, "acme", path, 409, "path_owned")
    (adapters / "acme" / "mine" / "link").symlink_to(shared / "sub", target_is_directory=True)
    _refused(sidecar, "acme", "mine", 409, "path_owned")


@pytest.mark.parametrize("path", ["mine\x00", "\x00", "x" * 5000])
def test_nul_bytes_and_huge_paths_are_422(sidecar: SidecarThread, adapters: Path, path: str) -> None:
    _refused(sidecar, "acme", path, 422, "malformed_request")


def test_the_reconciler_rechecks_adapters_inside_the_folder_and_trusts_the_operators_elsewhere(
    sidecar: SidecarThread, adapters: Path, make_adapter: Callable[..., Path], tmp_path: Path
) -> None:
    """A runtime-onboarded adapter whose folder was swapped for a link out is refused on the next (re)load; an
    adapter the operator registered outside the adapters root is not subject to the rule."""
    service = sidecar.app.state.service
    swapped = adapters / "acme" / "swapped"
    swapped.mkdir()
    (swapped / "adapter_model.safetensors").symlink_to(adapters / "globex" / "pirate" / "adapter_model.safetensors")
    trusted = tmp_path / "operator" / "sql"
    trusted.mkdir(parents=True)
    data = yaml.safe_load(sidecar.config.registry_path.read_text())
    acme = next(t for t in data["tenants"] if t["id"] == "acme")
    acme["adapters"] += [{"name": "swapped", "path": str(swapped)}, {"name": "trusted", "path": str(trusted)}]
    sidecar.config.registry_path.write_text(yaml.safe_dump(data))
    registry = Registry.load(sidecar.config.registry_path, check_paths=False)
    assert _code(lambda: service.admit(registry, registry.find_adapter("swapped")[1])) == "path_escape"
    assert _code(lambda: service.admit(registry, registry.find_adapter("trusted")[1])) == "config_missing"


def test_a_crowded_folder_is_refused_without_walking_it_all(sidecar: SidecarThread, adapters: Path) -> None:
    from tenantserve.sidecar.ownership import MAX_ENTRIES

    crowded = adapters / "acme" / "crowded"
    crowded.mkdir()
    for i in range(MAX_ENTRIES + 1):
        (crowded / f"f{i}").touch()
    _refused(sidecar, "acme", "crowded", 400, "too_many_files")


def test_the_tenant_folder_itself_is_not_an_adapter_directory(sidecar: SidecarThread, adapters: Path) -> None:
    """Red-team finding: '.' (or the folder's absolute path, or a link to it) was onboarded, and for the folder
    itself the store copied without checking each opened file: a weights file swapped for a link to another
    tenant's between the check and the copy got through. Now refused outright, and the copy checks every file."""
    folder = adapters / "acme"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tenantserve-base.json"):
        (folder / name).write_bytes((folder / "mine" / name).read_bytes())
    (folder / "self").symlink_to(folder, target_is_directory=True)
    for path in (".", str(folder), "self", "mine/.."):
        _refused(sidecar, "acme", path, 400, "path_invalid")


def test_the_store_copy_checks_files_in_the_tenant_folder_itself(tmp_path: Path) -> None:
    """The second layer: a copy scoped to the tenant's folder refuses a file that resolves outside it, even when
    the directory copied is the folder itself (what the check-then-copy race could reach)."""
    from tenantserve.admission.store import AdapterStore
    from tenantserve.sidecar.content import ServedContent

    root = tmp_path / "root"
    (root / "acme").mkdir(parents=True)
    (root / "globex").mkdir()
    (root / "globex" / "w.safetensors").write_bytes(b"x" * 16)
    content = ServedContent(AdapterStore(tmp_path / "store"), root)
    assert content.scope("acme", root / "acme") == root / "acme"
    (root / "acme" / "adapter_config.json").write_text("{}")
    (root / "acme" / "adapter_model.safetensors").symlink_to(root / "globex" / "w.safetensors")
    with pytest.raises(TenantserveError) as info:
        content.store.put(root / "acme", who="adapter 'x'", inside=content.scope("acme", root / "acme"))
    assert info.value.code == "path_escape"
