"""A registry write keeps the file's permission bits: the rename-based write used to leave every registry 0600
(``mkstemp``'s mode), so after one ``tenantserve keys create`` by the operator an engine or sidecar running as
another user could no longer read the registry it serves."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.registry import keys
from tenantserve.registry.schema import atomic_write_text
from tenantserve.registry.update import update_registry

REGISTRY = """# the operator's registry
version: 1
base: {name: b, path: base}
tenants:
  - id: acme   # first tenant
    adapters: []
"""


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o664])
def test_keys_create_keeps_the_registry_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "adapters.yaml"
    path.write_text(REGISTRY)
    path.chmod(mode)
    out = CliRunner().invoke(main, ["keys", "create", "--tenant", "acme", "--registry", str(path)])
    assert out.exit_code == 0, out.output
    assert "api_keys" in path.read_text() and "# first tenant" in path.read_text()
    assert mode_of(path) == mode, oct(mode_of(path))


def test_update_registry_keeps_the_mode_and_a_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "adapters.yaml"
    path.write_text(REGISTRY)
    path.chmod(0o644)
    update_registry(path, lambda r: keys.issue_key(r.tenants[0]))
    assert mode_of(path) == 0o644
    fresh = tmp_path / "new.json"
    atomic_write_text(fresh, "{}\n")
    assert mode_of(fresh) == 0o600 and fresh.read_text() == "{}\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_symlinked_registry_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    """``keys create`` on a registry that is a symlink replaced the link by a plain file: the linked file (the one
    config management deploys) never got the key, and the link was gone."""
    real = tmp_path / "deploy" / "adapters.yaml"
    real.parent.mkdir()
    real.write_text(REGISTRY)
    real.chmod(0o644)
    link = tmp_path / "adapters.yaml"
    link.symlink_to(Path("deploy") / "adapters.yaml")
    out = CliRunner().invoke(main, ["keys", "create", "--tenant", "acme", "--registry", str(link)])
    assert out.exit_code == 0, out.output
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert "api_keys" in real.read_text() and "# first tenant" in real.read_text()
    assert mode_of(real) == 0o644
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_without_follow_symlink_a_link_is_replaced_never_written_through(tmp_path: Path) -> None:
    """The other writers (a stamp in a tenant's adapter folder) must not let a tenant's symlink redirect the write
    to another file: there the link itself is replaced and its target is untouched."""
    victim = tmp_path / "victim.json"
    victim.write_text("precious\n")
    victim.chmod(0o4755)
    planted = tmp_path / "tenant" / "tenantserve-base.json"
    planted.parent.mkdir()
    planted.symlink_to(victim)
    atomic_write_text(planted, "{}\n")
    assert victim.read_text() == "precious\n"
    assert not planted.is_symlink() and planted.read_text() == "{}\n"
    assert mode_of(planted) == 0o600  # not the target's mode


def test_special_bits_are_not_copied(tmp_path: Path) -> None:
    path = tmp_path / "adapters.yaml"
    path.write_text(REGISTRY)
    path.chmod(0o6755)
    atomic_write_text(path, REGISTRY)
    assert mode_of(path) == 0o755
