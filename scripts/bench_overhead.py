"""What the tenant middleware costs: the same workload against vLLM without and with it, side by side in one run.

Two engines start from the same registry (one with ``security.auth: false``, plain vLLM; one with it on, the
middleware loaded and a tenant key used). Rounds alternate between them (A B, then B A, ...) so that drift on a
shared machine hits both alike. Reported: p50 latency at concurrency 1 and throughput at concurrency 16, and the
ratios with/without (goal: overhead <= 3%).

    .venv/bin/python scripts/bench_overhead.py [--rounds 6] [--c1-requests 20] [--c16-requests 64] [--max-tokens 16] [--registry PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tenantserve.keys import issue_key  # noqa: E402
from tenantserve.registry import Registry  # noqa: E402
from tests.conftest import DEFAULT_REGISTRY  # noqa: E402
from tests.integration.engines import RunningEngine, copy_registry, start_engine  # noqa: E402

ADMIN = "bench-admin-token"


@dataclass
class Side:
    name: str
    engine: RunningEngine
    key: str
    latencies: list[float] = field(default_factory=list)
    c16_requests: int = 0
    c16_seconds: float = 0.0
    round_p50: list[float] = field(default_factory=list)  # per round: p50 at c=1 (s)
    round_thr: list[float] = field(default_factory=list)  # per round: req/s at c=16


async def _one(client: httpx.AsyncClient, side: Side, max_tokens: int) -> float:
    start = time.perf_counter()
    resp = await client.post(f"{side.engine.url}/v1/completions", headers={"Authorization": f"Bearer {side.key}"},
                             json={"model": "sql", "prompt": "Table users(id,name). Query all names:",
                                   "max_tokens": max_tokens, "min_tokens": max_tokens, "temperature": 0})
    resp.raise_for_status()
    return time.perf_counter() - start


async def _round(side: Side, c1: int, c16: int, max_tokens: int) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        lat = [await _one(client, side, max_tokens) for _ in range(c1)]
        side.latencies += lat
        side.round_p50.append(statistics.median(lat))
        queue = list(range(c16))

        async def worker() -> None:
            while queue:
                queue.pop()
                await _one(client, side, max_tokens)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        elapsed = time.perf_counter() - start
        side.c16_seconds += elapsed
        side.c16_requests += c16
        side.round_thr.append(c16 / elapsed)


def _start(tmp: Path, auth: bool, source: Path) -> tuple[RunningEngine, str]:
    path = copy_registry(tmp / f"{'with' if auth else 'without'}.yaml", source)
    reg = Registry.load(path, check_paths=False)
    reg.security.auth = auth
    key = issue_key(reg.tenant("acme")) if auth else "none"
    reg.save(path)
    engine = start_engine(path, tmp / f"engine-{'with' if auth else 'without'}.log",
                          extra_env={"TENANTSERVE_ADMIN_TOKEN": ADMIN})
    return engine, key


def micro(n: int = 20_000) -> tuple[float, float]:
    """Microseconds per request through a trivial ASGI app, without and with the middleware (no engine, no HTTP):
    the middleware's own cost, free of the engine's noise."""
    from prometheus_client import CollectorRegistry

    from tenantserve.middleware import TenantMiddleware
    from tenantserve.registry import AdapterSpec, BaseSpec, TenantSpec

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
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--c1-requests", type=int, default=20)
    ap.add_argument("--c16-requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="source registry (default: the demo's)")
    ap.add_argument("--micro-only", action="store_true", help="only the in-process per-request cost (no engine)")
    args = ap.parse_args()
    bare, mw = micro()
    print(f"in-process, 100 tenants: bare app {bare:.1f} us/request, with middleware {mw:.1f} us/request "
          f"(+{mw - bare:.1f} us)")
    if args.micro_only:
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    sides: list[Side] = []
    try:
        for name, auth in (("without", False), ("with", True)):
            print(f"starting engine {name} middleware ...", file=sys.stderr, flush=True)
            engine, key = _start(tmp, auth, args.registry)
            sides.append(Side(name, engine, key))
        for side in sides:  # warm-up: adapter load, first-request costs
            asyncio.run(_round(side, 3, 16, args.max_tokens))
            side.latencies.clear()
            side.round_p50.clear()
            side.round_thr.clear()
            side.c16_requests, side.c16_seconds = 0, 0.0
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else reversed(sides):
                asyncio.run(_round(side, args.c1_requests, args.c16_requests, args.max_tokens))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for side in sides:
            side.engine.stop()
    _report(sides, args)


def _report(sides: list[Side], args: argparse.Namespace) -> None:
    without, with_ = sides
    p50 = {s.name: statistics.median(s.latencies) * 1000 for s in sides}
    thr = {s.name: s.c16_requests / s.c16_seconds for s in sides}
    print(f"workload: model sql, {args.max_tokens} tokens/request, {args.rounds} alternating rounds of "
          f"{args.c1_requests} sequential + {args.c16_requests} at concurrency 16, per engine")
    print(f"{'':24}{'without':>12}{'with':>12}{'ratio':>10}")
    print(f"{'p50 latency c=1 (ms)':24}{p50['without']:>12.1f}{p50['with']:>12.1f}"
          f"{p50['with'] / p50['without']:>10.3f}")
    print(f"{'throughput c=16 (req/s)':24}{thr['without']:>12.2f}{thr['with']:>12.2f}"
          f"{thr['with'] / thr['without']:>10.3f}")
    lat_r = [w / o for w, o in zip(with_.round_p50, without.round_p50)]
    thr_r = [w / o for w, o in zip(with_.round_thr, without.round_thr)]
    print(f"per-round ratios, median [min..max]: p50 {statistics.median(lat_r):.3f} [{min(lat_r):.3f}..{max(lat_r):.3f}]"
          f", throughput {statistics.median(thr_r):.3f} [{min(thr_r):.3f}..{max(thr_r):.3f}]")
    print(f"samples: c=1 {len(without.latencies)} / {len(with_.latencies)} requests; "
          f"c=16 {without.c16_requests} / {with_.c16_requests} requests")


if __name__ == "__main__":
    main()
