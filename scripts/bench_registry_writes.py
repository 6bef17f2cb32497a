"""What one registry write costs as the registry grows: 10 -> 100 -> 1,000 tenants (issue 11, goal: 1,000 within
1.5x of 10).

Each size gets an operator-style registry: the shipped demo's commented header and sections, then N tenants, each
with a trailing comment, one adapter and one API key (8 lines a tenant). One write is ``tenantserve keys create``:

- in-process: the ``keys create`` command invoked in this process (click's runner): lock, parse, validate, issue a
  key, re-validate, render, check, atomic write; no interpreter start, no imports;
- subprocess: ``python -m tenantserve keys create`` end to end, the time an operator (or an onboarding script) waits.

``--src DIR`` measures another checkout's ``src`` (e.g. the commit before issue 11, from ``git archive``).

Best of ``--repeat`` runs each (the machine is shared). After the runs, every file must still load, hold every key
written, and keep every comment of the original (checked; the script fails otherwise).

    .venv/bin/python scripts/bench_registry_writes.py [--sizes 10 100 1000] [--repeat 7] [--cli-repeat 5] [--src DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "adapters.yaml"


def make_registry(path: Path, tenants: int) -> None:
    """The demo's header, base, engine and security sections (comments included), then ``tenants`` tenants."""
    head = DEMO.read_text().split("\ntenants:", 1)[0]
    parts = [head, "\ntenants:\n"]
    for i in range(tenants):
        digest = hashlib.sha256(f"bench-{i}".encode()).hexdigest()
        parts.append(
            f"  - id: t{i:05d}                 # customer {i}, onboarded by the bench\n"
            f"    adapters:\n"
            f"      - name: a{i:05d}\n"
            f"        path: \"adapters/a{i:05d}\"   # quoted on purpose: quoting must survive\n"
            f"    api_keys:\n"
            f"      - id: key-{i:012x}\n"
            f"        sha256: {digest}\n"
            f"        created: 2026-01-01T00:00:00Z\n"
        )
    path.write_text("".join(parts))


def comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line]


def create_key(path: Path, tenant: str) -> None:
    """``tenantserve keys create``, in this process."""
    from click.testing import CliRunner

    from tenantserve.cli import main as cli

    done = CliRunner().invoke(cli, ["keys", "create", "--tenant", tenant, "--registry", str(path)])
    if done.exit_code != 0:
        raise SystemExit(f"keys create failed: {done.output}")


def best(run, repeat: int) -> tuple[float, float]:
    """(best wall-clock seconds, best CPU seconds of this process) over ``repeat`` runs."""
    wall, cpu = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(wall), min(cpu)


def cli_create(path: Path, tenant: str, src: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-m", "tenantserve", "keys", "create", "--tenant", tenant,
                           "--registry", str(path)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"keys create failed: {done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=7, help="in-process writes per size (best is kept)")
    parser.add_argument("--cli-repeat", type=int, default=5, help="subprocess writes per size (best is kept)")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the tenantserve sources to measure")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    from tenantserve.registry.keys import find_tenant
    from tenantserve.registry.schema import Registry

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"adapters-{n}.yaml"
            make_registry(path, n)
            original = path.read_text()
            middle = f"t{n // 2:05d}"  # a tenant in the middle of the file: nothing before or after is rewritten
            create_key(path, middle)  # warm imports and caches
            inproc, cpu = best(lambda: create_key(path, middle), args.repeat)
            cli, _ = best(lambda: cli_create(path, middle, args.src.resolve()), args.cli_repeat)
            after = path.read_text()
            registry = Registry.load(path, check_paths=False)
            written = len(find_tenant(registry, middle).api_keys) - 1
            if written != 1 + args.repeat + args.cli_repeat:
                raise SystemExit(f"{n} tenants: {written} keys written, expected {1 + args.repeat + args.cli_repeat}")
            if comments(after) != comments(original) or len(registry.tenants) != n:
                raise SystemExit(f"{n} tenants: comments or tenants lost")
            rows.append((n, len(original.splitlines()), inproc, cpu, cli))
    base_in, base_cpu, base_cli = rows[0][2], rows[0][3], rows[0][4]
    print(f"{'tenants':>8} {'lines':>6} {'in-process ms':>14} {'ratio':>6} {'(CPU ms':>8} {'ratio)':>7} "
          f"{'keys create (subprocess) ms':>28} {'ratio':>6}")
    for n, lines, inproc, cpu, cli in rows:
        print(f"{n:>8} {lines:>6} {inproc * 1e3:>14.1f} {inproc / base_in:>6.2f} {cpu * 1e3:>8.1f} "
              f"{cpu / base_cpu:>7.2f} {cli * 1e3:>28.0f} {cli / base_cli:>6.2f}")
    print(f"(best of {args.repeat} in-process, {args.cli_repeat} subprocess writes; sources {args.src}; "
          f"python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
