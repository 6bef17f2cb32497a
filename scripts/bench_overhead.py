"""What the tenant middleware costs: the same workload against vLLM without and with it, side by side in one run.

Two engines start from the same registry (one with ``security.auth: false``, plain vLLM; one with it on, the
middleware loaded and a tenant key used). Requests alternate between them one by one (A B, then B A, ...), and the
c=16 bursts likewise, so that the load of a shared machine hits both alike. Reported: p50 latency at concurrency 1 and throughput at concurrency 16, and the
ratios with/without (goal: overhead <= 3%).

    .venv/bin/python scripts/bench_overhead.py [--pairs 200] [--bursts 40] [--max-tokens 16] [--registry PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tenantserve.registry.keys import issue_key  # noqa: E402
from tenantserve.registry.schema import Registry  # noqa: E402
from tests.conftest import DEFAULT_REGISTRY  # noqa: E402
from tests.integration.engines import RunningEngine, copy_registry, start_engine  # noqa: E402

ADMIN = "bench-admin-token"


@dataclass
class Side:
    name: str
    engine: RunningEngine
    key: str
    latencies: list[float] = field(default_factory=list)  # c=1, one per request
    bursts: list[float] = field(default_factory=list)  # c=16, seconds per burst of 16 requests
    api_cpu: float = 0.0  # CPU seconds the API server process (where the middleware runs) spent on c=1 requests
    all_cpu: float = 0.0  # ... and the whole engine (API server, EngineCore, workers)

    def cpu(self) -> tuple[float, float]:
        pid = self.engine.process.pid
        assert pid is not None
        return _cpu_seconds([pid]), _cpu_seconds(_group(pid))


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime from /proc: CPU time is what a loaded machine does not distort (wall time it does)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def _one(client: httpx.AsyncClient, side: Side, max_tokens: int) -> float:
    start = time.perf_counter()
    resp = await client.post(f"{side.engine.url}/v1/completions", headers={"Authorization": f"Bearer {side.key}"},
                             json={"model": "sql", "prompt": "Table users(id,name). Query all names:",
                                   "max_tokens": max_tokens, "min_tokens": max_tokens, "temperature": 0})
    resp.raise_for_status()
    return time.perf_counter() - start


async def _interleaved(sides: list[Side], pairs: int, bursts: int, max_tokens: int) -> None:
    """A then B, then B then A, ...: one request at a time (c=1), then bursts of 16 concurrent requests (c=16).
    Interleaving at this grain makes the load of a shared machine fall on both sides alike."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        for i in range(pairs):
            for side in sides if i % 2 == 0 else reversed(sides):
                api0, all0 = side.cpu()
                side.latencies.append(await _one(client, side, max_tokens))
                api1, all1 = side.cpu()
                side.api_cpu += api1 - api0
                side.all_cpu += all1 - all0
        for i in range(bursts):
            for side in sides if i % 2 == 0 else reversed(sides):
                start = time.perf_counter()
                await asyncio.gather(*(_one(client, side, max_tokens) for _ in range(16)))
                side.bursts.append(time.perf_counter() - start)


def _start(tmp: Path, name: str, auth: bool, source: Path) -> tuple[RunningEngine, str]:
    path = copy_registry(tmp / f"{name}.yaml", source)
    reg = Registry.load(path, check_paths=False)
    reg.security.auth = auth
    key = issue_key(reg.tenant("acme")) if auth else "none"
    reg.save(path)
    engine = start_engine(path, tmp / f"engine-{name}.log",
                          extra_env={"TENANTSERVE_ADMIN_TOKEN": ADMIN})
    return engine, key


def micro(n: int = 20_000) -> tuple[float, float]:
    """Microseconds per request through a trivial ASGI app, without and with the middleware (no engine, no HTTP):
    the middleware's own cost, free of the engine's noise."""
    from prometheus_client import CollectorRegistry

    from tenantserve.middleware import TenantMiddleware
    from tenantserve.registry.schema import AdapterSpec, BaseSpec, TenantSpec

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    tmp = Path(tempfile.mkdtemp(prefix="bench-micro-"))
    reg = Registry(base=BaseSpec(name="demo-base", path=Path("b")),
                   tenants=[TenantSpec(id=f"t{i}", adapters=[AdapterSpec(name=f"a{i}", path=Path("a"))])
                            for i in range(100)])
    key = issue_key(reg.tenants[42])
    reg.save(tmp / "r.yaml")
    wrapped = TenantMiddleware(app, registry_path=tmp / "r.yaml", environ={}, metrics_registry=CollectorRegistry())
    body = b'{"model": "a42", "prompt": "Table users(id,name). Query all names:", "max_tokens": 16}'
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "client": ("127.0.0.1", 1),
             "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-length", str(len(body)).encode())]}

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):  # type: ignore[no-untyped-def]
        pass

    async def run(target) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        for _ in range(n):
            await target(dict(scope), receive, send)
        return (time.perf_counter() - start) / n * 1e6

    bare, mw = asyncio.run(run(app)), asyncio.run(run(wrapped))
    return bare, mw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=200, help="interleaved request pairs at concurrency 1")
    ap.add_argument("--bursts", type=int, default=40, help="interleaved pairs of 16-request bursts")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="source registry (default: the demo's)")
    ap.add_argument("--control", action="store_true",
                    help="A/A control: both engines WITHOUT the middleware, to show the noise floor of the ratios")
    ap.add_argument("--micro-only", action="store_true", help="only the in-process per-request cost (no engine)")
    ap.add_argument("--mode", choices=["sequential", "interleaved"], default="sequential",
                    help="sequential: one engine alive at a time, ABBA phases; interleaved: both alive at once, "
                         "requests alternate (noisier on a 2-core machine)")
    args = ap.parse_args()
    bare, mw = micro()
    print(f"in-process, 100 tenants: bare app {bare:.1f} us/request, with middleware {mw:.1f} us/request "
          f"(+{mw - bare:.1f} us)")
    if args.micro_only:
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    if args.mode == "sequential":
        _report(_sequential(tmp, args), args)
        return
    sides: list[Side] = []
    try:
        plan = (("without", False), ("with", not args.control))
        for name, auth in plan:
            print(f"starting engine {name} middleware ...", file=sys.stderr, flush=True)
            engine, key = _start(tmp, name, auth, args.registry)
            sides.append(Side(name, engine, key))
        asyncio.run(_interleaved(sides, 4, 2, args.max_tokens))  # warm-up: adapter load, first requests
        for side in sides:
            side.latencies.clear()
            side.bursts.clear()
            side.api_cpu = side.all_cpu = 0.0
        asyncio.run(_interleaved(sides, args.pairs, args.bursts, args.max_tokens))
    finally:
        for side in sides:
            side.engine.stop()
    _report(sides, args)


def _sequential(tmp: Path, args: argparse.Namespace) -> list[Side]:
    """ABBA phases with one engine alive at a time (two CPU engines alive at once compete for the same cores and
    skew each other); each phase warms up, then runs half the pairs and bursts for its side."""
    totals: dict[str, Side] = {}
    order = (("without", False), ("with", not args.control), ("with", not args.control), ("without", False))
    for i, (name, auth) in enumerate(order):
        print(f"phase {i + 1}: engine {name} middleware ...", file=sys.stderr, flush=True)
        engine, key = _start(tmp, f"{name}-{i}", auth, args.registry)
        try:
            side = Side(name, engine, key)
            asyncio.run(_interleaved([side], 4, 2, args.max_tokens))  # warm-up
            side.latencies.clear()
            side.bursts.clear()
            side.api_cpu = side.all_cpu = 0.0
            asyncio.run(_interleaved([side], max(1, args.pairs // 2), max(1, args.bursts // 2), args.max_tokens))
        finally:
            engine.stop()
        total = totals.setdefault(name, Side(name, engine, key))
        total.latencies += side.latencies
        total.bursts += side.bursts
        total.api_cpu += side.api_cpu
        total.all_cpu += side.all_cpu
    return [totals["without"], totals["with"]]


def _report(sides: list[Side], args: argparse.Namespace) -> None:
    without, with_ = sides
    p50 = {s.name: statistics.median(s.latencies) * 1000 for s in sides}
    thr = {s.name: 16 * len(s.bursts) / sum(s.bursts) for s in sides}
    pair_r = [w / o for w, o in zip(with_.latencies, without.latencies)]
    burst_r = [o / w for w, o in zip(with_.bursts, without.bursts)]
    if args.control:
        print("CONTROL RUN: both engines run WITHOUT the middleware; ratios show the noise floor")
    print(f"workload: model sql, {args.max_tokens} tokens/request; {args.pairs} interleaved request pairs at c=1, "
          f"{args.bursts} interleaved pairs of 16-request bursts at c=16 ({args.mode})")
    print(f"{'':28}{'without':>10}{'with':>10}{'ratio':>8}")
    print(f"{'p50 latency c=1 (ms)':28}{p50['without']:>10.1f}{p50['with']:>10.1f}"
          f"{p50['with'] / p50['without']:>8.3f}")
    print(f"{'throughput c=16 (req/s)':28}{thr['without']:>10.2f}{thr['with']:>10.2f}"
          f"{thr['with'] / thr['without']:>8.3f}")
    api = {s.name: s.api_cpu / len(s.latencies) * 1000 for s in sides}
    whole = {s.name: s.all_cpu / len(s.latencies) * 1000 for s in sides}
    print(f"{'API server CPU/request (ms)':28}{api['without']:>10.2f}{api['with']:>10.2f}"
          f"{api['with'] / api['without']:>8.3f}")
    print(f"{'engine CPU/request c=1 (ms)':28}{whole['without']:>10.2f}{whole['with']:>10.2f}"
          f"{whole['with'] / whole['without']:>8.3f}")
    print(f"paired ratios, median [p25..p75]: latency c=1 {_spread(pair_r)}; throughput c=16 {_spread(burst_r)}")


def _spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.3f} [{q[0]:.3f}..{q[2]:.3f}]"


if __name__ == "__main__":
    main()
