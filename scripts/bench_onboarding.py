"""Onboarding without a restart vs with one, and recovery after an engine crash, measured side by side in one run.

    .venv/bin/python scripts/bench_onboarding.py [--adapters 20] [--registered 50]

1. Runtime onboarding through the sidecar (request -> 201 = listed in /v1/models and a one-token warm-up went
   through it), for N fresh adapters: p50/p95.
2. Restart-based onboarding: stop vLLM and start it again with the new adapter in --lora-modules; time from the
   stop to the first completion through the new adapter.
3. Restart recovery: M adapters registered (most onboarded at runtime), kill -9 the engine, start it again with its
   original command line (the registry at its launch); time from the restarted engine's first healthy answer to every
   registered adapter listed by /v1/models again (the sidecar's reconciler does it), then one completion through the
   last-onboarded adapter.
The sidecar runs as its own process (`tenantserve sidecar`), as in production.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tenantserve.admission.fingerprint import fingerprint  # noqa: E402
from tenantserve.demo.run import (
    embedded,  # noqa: E402
    free_port,  # noqa: E402
)
from tenantserve.engine.launch import plan_launch  # noqa: E402
from tenantserve.engine.process import EngineProcess  # noqa: E402
from tenantserve.registry.schema import AdapterSpec, Registry  # noqa: E402
from tests.integration.engines import copy_registry  # noqa: E402

TOKEN = "bench-admin-token"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def served(client: httpx.Client) -> set[str]:
    try:
        data = client.get("/v1/models").json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return set()
    return {m["id"] for m in data if m.get("parent")}


def wait_health(client: httpx.Client, timeout: float = 420.0) -> float:
    """Poll /health every 20 ms; the monotonic time of the first 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/health", timeout=1.0).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise SystemExit("engine not healthy in time")


def complete(client: httpx.Client, model: str) -> str:
    resp = client.post("/v1/completions", json={"model": model, "prompt": embedded.SQL_PROMPT, "max_tokens": 8,
                                               "temperature": 0}, timeout=120)
    resp.raise_for_status()
    return resp.json()["choices"][0]["text"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapters", type=int, default=20, help="adapters onboarded at runtime (latency sample)")
    ap.add_argument("--registered", type=int, default=50, help="adapters registered for the recovery measurement")
    ap.add_argument("--registry", type=Path, default=ROOT / "configs" / "adapters.yaml", help="registry to start from")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-onboarding-"))
    registry_path = copy_registry(tmp / "adapters.yaml", args.registry)
    base_fp = fingerprint(Registry.load(registry_path).base_path).value
    source = Registry.load(registry_path).adapter_path(Registry.load(registry_path).find_adapter("sql")[1])
    for i in range(max(args.adapters, args.registered) + 1):
        shutil.copytree(source, tmp / "adapters" / f"a{i:02d}")
    port, sidecar_port = free_port(), free_port()
    engine_url = f"http://127.0.0.1:{port}"
    original_plan = plan_launch(Registry.load(registry_path), port=port)
    engine = EngineProcess(original_plan, base_url=engine_url, log_path=tmp / "engine.log")
    env = {**os.environ, "TENANTSERVE_ADMIN_TOKEN": TOKEN}
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "tenantserve", "sidecar", "--registry", str(registry_path), "--engine-url", engine_url,
         "--port", str(sidecar_port)], env=env, stdout=(tmp / "sidecar.log").open("wb"), stderr=subprocess.STDOUT)
    eng = httpx.Client(base_url=engine_url, timeout=30)
    adm = httpx.Client(base_url=f"http://127.0.0.1:{sidecar_port}", timeout=300,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        engine.start()
        t0 = time.monotonic()
        wait_health(eng)
        print(f"engine ready in {time.monotonic() - t0:.1f} s (log {tmp / 'engine.log'})", flush=True)
        assert adm.post("/admin/tenants", json={"id": "bench"}).status_code in (200, 201)

        # 1. runtime onboarding
        runtime: list[float] = []
        for i in range(args.adapters):
            start = time.perf_counter()
            resp = adm.post("/admin/tenants/bench/adapters", json={"name": f"a{i:02d}",
                                                                   "path": str(tmp / "adapters" / f"a{i:02d}"),
                                                                   "base_fingerprint": base_fp})
            runtime.append(time.perf_counter() - start)
            assert resp.status_code == 201, resp.text
        assert complete(eng, f"a{args.adapters - 1:02d}").strip().startswith("SELECT")

        # 2. restart-based onboarding of one more adapter
        extra = f"a{args.adapters:02d}"
        reg = Registry.load(registry_path)
        reg.tenant("bench").adapters.append(AdapterSpec(name=extra, path=tmp / "adapters" / extra,
                                                           base_fingerprint=base_fp))
        restart_plan = plan_launch(reg, port=port)
        start = time.monotonic()
        engine.stop()
        engine.plan = restart_plan
        engine.start()
        wait_health(eng)
        complete(eng, extra)
        restart = time.monotonic() - start
        engine.stop()
        engine.plan = original_plan

        # 3. restart recovery with `registered` adapters in the registry, engine restarted from its original argv
        engine.start()
        wait_health(eng)
        have = len(Registry.load(registry_path).adapters())
        i = args.adapters
        while have < args.registered:
            resp = adm.post("/admin/tenants/bench/adapters", json={"name": f"a{i:02d}",
                                                                   "path": str(tmp / "adapters" / f"a{i:02d}"),
                                                                   "base_fingerprint": base_fp})
            assert resp.status_code in (200, 201), resp.text
            have = len(Registry.load(registry_path).adapters())
            i += 1
        registered = {a.name for _, a in Registry.load(registry_path).adapters()}
        assert served(eng) == registered
        engine.kill()
        engine.start()
        healthy_at = wait_health(eng)
        first_view = len(served(eng) & registered)
        while served(eng) != registered:
            time.sleep(0.02)
        recovered = time.monotonic() - healthy_at
        last = f"a{i - 1:02d}"
        complete(eng, last)
        recovered_serving = time.monotonic() - healthy_at

        p50, p95 = statistics.median(runtime), pct(runtime, 0.95)
        print()
        print(f"runtime onboarding, {len(runtime)} adapters (request -> listed + warm-up answered):")
        print(f"  p50 {p50 * 1000:.0f} ms   p95 {p95 * 1000:.0f} ms   min {min(runtime) * 1000:.0f} ms   "
              f"max {max(runtime) * 1000:.0f} ms")
        print(f"restart-based onboarding (stop, start with --lora-modules, first completion): {restart:.1f} s")
        print(f"  speed-up: {restart / p50:.0f}x at p50, {restart / p95:.0f}x at p95 (goal >= 100x)")
        print(f"restart recovery, {len(registered)} registered adapters ({first_view} in the restarted engine's argv):")
        print(f"  first healthy answer -> all listed: {recovered:.2f} s (goal < 2 s); "
              f"-> first completion through '{last}': {recovered_serving:.2f} s")
    finally:
        sidecar.terminate()
        sidecar.wait(30)
        engine.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
