"""``tenantserve fingerprint``: sha256 of every file that defines a model, the overall fingerprint, and ``--pin``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from tenantserve.admission.fingerprint import Fingerprint, fingerprint, model_files
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.served_base import pin_registry_text
from tenantserve.cli.options import command_settings
from tenantserve.errors import FingerprintError
from tenantserve.registry.schema import Registry
from tenantserve.registry.update import update_registry


@click.command("fingerprint")
@click.argument("path", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and fingerprint as JSON.")
@click.option("--pin", is_flag=True, help="Write the fingerprint into the registry as the base's pin.")
@click.option("--registry", "registry_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Registry to pin in (default: env TENANTSERVE_REGISTRY or configs/adapters.yaml).")
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Hashing threads (default: CPU count).")
def command(path: Path | None, as_json: bool, pin: bool, registry_path: Path | None, workers: int | None) -> None:
    """Fingerprint a model or adapter directory (default: the registry's base).

    Each weight, config and tokenizer file gets its sha256 (the hub's LFS oid); the fingerprint is the sha256 of
    that manifest. Unchanged files are not read again (cache: $TENANTSERVE_CACHE_DIR, else ~/.cache/tenantserve).
    With --pin, the registry's base.fingerprint and base.files are set, and a changed base is refused from then on.
    """
    registry = _registry(registry_path) if pin or path is None else None
    if path is None:
        path = registry.base_path  # type: ignore[union-attr]
    if registry is not None and pin and path.resolve() != registry.base_path:
        raise FingerprintError(f"--pin: {path} is not the registry's base ({registry.base_path})", code="pin_path")
    cache = FingerprintCache.default()
    started = time.perf_counter()
    fp = _run(path, cache, workers, show_progress=not as_json)
    seconds = time.perf_counter() - started
    if pin:
        _pin(registry, fp)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(_as_dict(fp, seconds, pin=_pin_status(registry, path, fp, pinned_now=pin)), indent=2))
        return
    for f in fp.files:
        click.echo(f"{f.sha256}  {f.size:>14,}  {f.name}")
    rate = fp.bytes_hashed / seconds / 1e6 if seconds > 0 and fp.bytes_hashed else 0.0
    click.echo(f"fingerprint {fp.value}")
    click.echo(f"{len(fp.files)} files, {fp.total_bytes:,} bytes; hashed {fp.bytes_hashed:,} bytes, "
               f"{fp.files_cached} from cache; {seconds:.3f} s" + (f" ({rate:,.0f} MB/s)" if rate else ""), err=True)
    if pin:
        click.echo(f"pinned in {registry.source}", err=True)  # type: ignore[union-attr]


def _pin(registry: Registry, fp: Fingerprint) -> None:
    """Set the base's pin through the one update path (file lock, on the file as it is now: the sidecar may have
    changed it while we hashed). Only the base section's text is edited (comments kept) when that means exactly the
    pinned registry; otherwise the usual keep-the-comments rendering applies."""
    source = registry.source
    assert source is not None

    def change(current: Registry) -> None:
        current.base.fingerprint = fp.value
        current.base.files = fp.manifest()

    update_registry(source, change, edit_text=lambda text: pin_registry_text(text, fp))


def _registry(path: Path | None) -> Registry:
    return Registry.load(path or command_settings().registry)


def _run(path: Path, cache: FingerprintCache, workers: int | None, *, show_progress: bool) -> Fingerprint:
    console = Console(stderr=True)
    if not (show_progress and console.is_terminal):
        return fingerprint(path, cache=cache, workers=workers)
    total = sum(p.stat().st_size for p in model_files(path))
    columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"sha256 {path.name}", total=total)
        return fingerprint(path, cache=cache, workers=workers, on_progress=lambda n: progress.advance(task, n))


def _pin_status(registry: Registry | None, path: Path, fp: Fingerprint, *, pinned_now: bool) -> str | None:
    """``match`` / ``mismatch`` / ``unpinned`` when ``path`` is the registry's base, else None (no pin applies)."""
    if pinned_now:
        return "match"
    if registry is None or path.resolve() != registry.base_path:
        return None
    if registry.base.fingerprint is None:
        return "unpinned"
    return "match" if registry.base.fingerprint == fp.value else "mismatch"


def _as_dict(fp: Fingerprint, seconds: float, *, pin: str | None) -> dict:
    return {
        "path": str(fp.path), "fingerprint": fp.value, "pinned": pin == "match", "pin": pin,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in fp.files],
        "bytes": fp.total_bytes, "bytes_hashed": fp.bytes_hashed, "files_cached": fp.files_cached,
        "seconds": round(seconds, 6),
    }
