"""``tenantserve stamp``: record, next to an adapter, the fingerprint of the base it was trained on."""

from __future__ import annotations

from pathlib import Path

import click

from tenantserve.admission.adapter_dir import write_stamp
from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.errors import FingerprintError


@click.command("stamp")
@click.argument("adapter_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--base", "base_dir", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="The base model directory the adapter was trained on (it is fingerprinted).")
@click.option("--fingerprint", "value", default=None, help="The base's fingerprint, if already known (sha256:...).")
def command(adapter_dir: Path, base_dir: Path | None, value: str | None) -> None:
    """Write ADAPTER_DIR/tenantserve-base.json: the base this adapter was trained on.

    For training pipelines: run it right after training, with the base used for training. Admission then refuses
    to serve the adapter on any other base (exit 2, reason base_mismatch).
    """
    if (base_dir is None) == (value is None):
        raise FingerprintError("give exactly one of --base BASE_DIR or --fingerprint sha256:...", code="usage")
    if base_dir is not None:
        value = fingerprint(base_dir, cache=FingerprintCache.default()).value
    path = write_stamp(adapter_dir, value, base_name=base_dir.name if base_dir else None)  # type: ignore[arg-type]
    click.echo(f"stamped {path}: base {value}")
