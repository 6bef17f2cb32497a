"""The lab, end to end: one engine, one base, several tenants' adapters, requests sharing one batch.

``run_demo`` starts the engine from the registry, runs the lab's experiments through the real ``openai`` client,
prints what happened and the memory line items, stops the engine, and reports whether the behaviours held.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import AsyncOpenAI
from rich.console import Console
from rich.table import Table

from tenantserve.admission.adapter_dir import bytes_on_disk
from tenantserve.demo import embedded
from tenantserve.engine.launch import plan_launch
from tenantserve.engine.process import EngineProcess
from tenantserve.errors import TenantserveError
from tenantserve.planning.memory import (
    LLAMA2_7B_BYTES,
    LinearShapes,
    adapter_bills,
    adapter_bytes,
    human_bytes,
    llama2_7b_shapes,
)
from tenantserve.registry.schema import Registry
from tenantserve.vllm_plugin.metrics import per_label

SLOT_COUNTERS = ("slot_hits", "slot_misses", "slot_evictions", "deferred_requests")

#: Measured by scripts/bench_lora_delta.py on this kind of machine (BENCHMARKS.md, "CPU LoRA delta").
ADAPTER_COST = ("what an adapter costs per step (CPU, Llama-2-7B widths, rank 16, measured by "
                "scripts/bench_lora_delta.py): tenantserve's grouped LoRA delta adds 1.5-2.7% of a layer's base "
                "matmul in float32 (0.2-0.6% in bf16) and nothing to base-only batches; vLLM 0.32's own CPU ops add "
                "22-120%. End to end, 4 adapters mixed into base traffic: 0.95x LoRA-off tokens/s (vLLM's ops: "
                "0.76x; scripts/bench_mixed_batch.py).")


@dataclass(frozen=True)
class Completion:
    """One answer: the model asked, the prompt, the text and the request's wall time in seconds."""

    model: str
    prompt: str
    text: str
    seconds: float


async def complete_together(client: AsyncOpenAI, pairs: list[tuple[str, str]], max_tokens: int = 24,
                            *, chat: bool = False) -> list[Completion]:
    """Send every (model, prompt) at once, so the engine schedules them into the same batch; greedy decoding.
    ``chat``: through ``chat.completions`` (the prompt as the one user message) instead of ``completions``."""

    async def one(model: str, prompt: str) -> Completion:
        start = time.perf_counter()
        if chat:
            resp = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0)
            text = resp.choices[0].message.content or ""
        else:
            resp = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
            text = resp.choices[0].text
        return Completion(model, prompt, text, time.perf_counter() - start)

    return list(await asyncio.gather(*(one(m, p) for m, p in pairs)))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS's choice; another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class DemoError(TenantserveError):
    """The demo cannot run as configured."""

    exit_code = 2


def demo_api_key(registry: Registry, environ: Mapping[str, str]) -> str:
    """The key the demo's client sends: any string when the registry has auth off; with auth on, the admin token
    (which the tenant middleware lets reach every model). Raises ``DemoError`` (exit 2) when it is not set."""
    security = registry.security
    if not security.auth:
        return "demo"
    token = environ.get(security.admin_token_env)
    if not token:
        raise DemoError(
            f"this registry has security.auth on, so the engine wants a key: export {security.admin_token_env} "
            "(e.g. $(openssl rand -hex 32)) and run the demo again; it then starts the engine with that admin token "
            "and uses it (or run the demo on a loopback registry with `security: {auth: false}`)",
            code="admin_token_missing")
    return token


class Demo:
    """``tenantserve demo``: start the engine on ``port`` (its log in ``log_path``, ready within ``timeout`` seconds),
    send the mixed batch, print what each tenant got, stop the engine. ``failures`` lists what was not seen."""

    def __init__(self, registry: Registry, *, console: Console, port: int, log_path: Path, timeout: float,
                 api_key: str = "demo") -> None:
        self.registry = registry
        self.console = console
        self.port = port
        self.log_path = log_path
        self.timeout = timeout
        self.api_key = api_key
        self.failures: list[str] = []

    def run(self) -> bool:
        """Run everything; True when every required behaviour was seen."""
        plan = plan_launch(self.registry, port=self.port)
        self.console.rule("[bold]tenantserve demo: many LoRA fine-tunes, one base, one batch")
        self.console.print(
            f"engine: vLLM from {self.registry.root}, base [cyan]{self.registry.base.name}[/], "
            f"adapters {', '.join(a.name for _, a in self.registry.adapters())}; "
            f"max_loras={plan.knobs.max_loras}, max_lora_rank={plan.knobs.max_lora_rank}"
        )
        engine = EngineProcess(plan, base_url=f"http://127.0.0.1:{self.port}", log_path=self.log_path)
        try:
            with self.console.status("starting vLLM (30-60 s on 2 CPU cores) ...") as status:
                took = engine.start_ready(self.timeout, tick=lambda s: status.update(f"starting vLLM ... {s:.0f} s"))
            self.console.print(f"engine ready in {took:.1f} s (log: {self.log_path})")
            asyncio.run(self._experiments())
        finally:
            with self.console.status("stopping the engine ..."):
                engine.stop()
            self.console.print("engine stopped.")
        self._memory()
        if self.failures:
            for failure in self.failures:
                self.console.print(f"[red]FAILED[/]: {failure}")
            return False
        self.console.print("[green]the lab's behaviours held: the adapter, not the prompt, carries the behaviour.[/]")
        self.console.print(ADAPTER_COST)
        return True

    async def _experiments(self) -> None:
        base, sql = self.registry.base.name, embedded.SQL_ADAPTER
        others = [a.name for _, a in self.registry.adapters() if a.name != sql]
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.api_key) as client:
            self._section("1. one batch, two behaviours: request 0 on the base, request 1 on the SQL adapter")
            out = await complete_together(client, [(base, embedded.FRUIT_PROMPT), (sql, embedded.SQL_PROMPT)])
            self._show(out)
            self._expect(out[0], embedded.BASE_ON_FRUIT)
            self._expect(out[1], embedded.SQL_ON_SQL)

            self._section("1b. the same batch through chat.completions, what most API clients send")
            out = await complete_together(client, [(base, embedded.FRUIT_PROMPT), (sql, embedded.SQL_PROMPT)],
                                          chat=True)
            self._show(out)
            self._expect(out[0], embedded.BASE_ON_FRUIT)
            self._expect(out[1], embedded.SQL_ON_SQL)

            self._section("2. swap the tags: behaviour follows the tag, not the prompt (the base rambles on SQL)")
            out = await complete_together(client, [(sql, embedded.FRUIT_PROMPT), (base, embedded.SQL_PROMPT)])
            self._show(out)
            if "SELECT" in out[1].text.upper():
                self.failures.append(f"the base answered the SQL prompt with SQL: {out[1].text!r}")

            self._section(
                f"3. {1 + len(others)} adapters + the base at once on max_loras={self.registry.engine.max_loras}: "
                "one adapter waits for a slot (a defer), then runs"
            )
            pairs = [(base, embedded.FRUIT_PROMPT), (sql, embedded.SQL_PROMPT)]
            pairs += [(name, embedded.FRUIT_PROMPT) for name in others]
            before = await self._slot_counters()
            out = await complete_together(client, pairs)
            after = await self._slot_counters()
            self._show(out, latency=True)
            self._expect(out[0], embedded.BASE_ON_FRUIT)
            self._expect(out[1], embedded.SQL_ON_SQL)
            self._show_counters(before, after, [name for name, _ in pairs[1:]])

    async def _slot_counters(self) -> dict[str, dict[str, float]]:
        """The plugin's per-adapter counters from the engine's /metrics (README, Metrics)."""
        async with httpx.AsyncClient(timeout=5.0) as http:
            text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
        return {name: per_label(text, f"tenantserve_lora_{name}_total") for name in SLOT_COUNTERS}

    def _show_counters(self, before: dict, after: dict, adapters: list[str]) -> None:
        table = Table("adapter", *(name.replace("_", " ") for name in SLOT_COUNTERS),
                      title="what the engine counted during that batch (tenantserve_lora_*_total)")
        for adapter in adapters:
            table.add_row(adapter, *(f"{after[n].get(adapter, 0) - before[n].get(adapter, 0):.0f}" for n in SLOT_COUNTERS))
        self.console.print(table)

    def _memory(self) -> None:
        self._section("4. the memory bill: one shared base, a small delta per adapter")
        base_dir = self.registry.base_path
        shapes = LinearShapes.from_model_dir(base_dir)
        base_bytes = bytes_on_disk(base_dir)
        table = Table("item", "formula bytes", "on disk", "ratio to base")
        table.add_row(f"base {self.registry.base.name} (shared by ALL requests)", "", human_bytes(base_bytes), "1")
        for bill in adapter_bills(self.registry, shapes):
            cfg = bill.config
            table.add_row(
                f"adapter {bill.name} (r={cfg.rank}, {'/'.join(m.removesuffix('_proj') for m in cfg.target_modules)})",
                human_bytes(bill.formula_bytes), human_bytes(bill.disk_bytes),
                f"1/{base_bytes / max(bill.formula_bytes, 1):.0f}",
            )
        ref = adapter_bytes(llama2_7b_shapes(), ("q_proj", "k_proj", "v_proj", "o_proj"), 16, 2)
        ref_base = LLAMA2_7B_BYTES
        table.add_row("reference: Llama-2-7B base, fp16", "", human_bytes(ref_base), "1")
        table.add_row("reference: its rank-16 q/k/v/o adapter, fp16", human_bytes(ref), "", f"1/{ref_base / ref:.0f}")
        self.console.print(table)
        self.console.print(
            "formula: layers x sum over target modules of r x (in + out) x dtype bytes; on-disk bytes add the "
            "safetensors header. Consolidated, N tenants cost one base + N deltas instead of N bases."
        )

    def _section(self, title: str) -> None:
        self.console.print()
        self.console.rule(title, align="left")

    def _show(self, out: list[Completion], *, latency: bool = False) -> None:
        table = Table("#", "model", "prompt", "output", *(["seconds"] if latency else []))
        for i, c in enumerate(out):
            table.add_row(str(i), c.model, c.prompt, repr(c.text.strip()), *([f"{c.seconds:.2f}"] if latency else []))
        self.console.print(table)

    def _expect(self, got: Completion, want: str) -> None:
        if got.text.strip() != want:
            self.failures.append(f"{got.model} on {got.prompt!r}: expected {want!r}, got {got.text.strip()!r}")
