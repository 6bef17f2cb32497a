"""``tenantserve plan``: the memory bill and GPUs saved, for Llama-2-7B or for the registry's own base."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tenantserve.admission.adapter_dir import bytes_on_disk
from tenantserve.planning.memory import (
    GIB,
    LLAMA2_7B_BYTES,
    LinearShapes,
    adapter_bills,
    adapter_bytes,
    human_bytes,
    llama2_7b_shapes,
    registry_plan_values,
    slot_bytes,
)
from tenantserve.planning.plan import PlanInput, choose_inputs, make_plan
from tenantserve.registry.schema import Registry


@click.command("plan")
@click.option("--registry", "registry_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Plan for this registry: its base, tenants, largest adapter and engine knobs (options override "
                   "them); reconcile each adapter's formula bytes with its bytes on disk [default: the Llama-2-7B "
                   "reference of the lab].")
@click.option("--tenants", type=click.IntRange(1), default=None, help="Tenants [reference: 40].")
@click.option("--tenants-per-engine", type=click.IntRange(1), default=None,
              help="Tenants one consolidated engine serves (set by throughput; see `tenantserve simulate`) "
                   "[reference: 40; registry: all its tenants].")
@click.option("--rank", type=click.IntRange(1, 512), default=None, help="Adapter rank [reference: 16].")
@click.option("--max-loras", type=click.IntRange(1, 256), default=None, help="Slots per engine [reference: 8].")
@click.option("--max-lora-rank", type=click.IntRange(1, 512), default=None, help="Slot rank [reference: 16].")
@click.option("--max-cpu-loras", type=click.IntRange(1), default=None, help="Host cache [reference: 40].")
@click.option("--gpu-gib", type=click.FloatRange(1, 1024), default=80, show_default=True, help="Memory of one GPU.")
@click.option("--dtype-bytes", type=click.Choice(["1", "2", "4"]), default=None,
              help="Bytes per weight [reference: 2 (fp16); registry: the engine's dtype, else the adapters'].")
@click.option("--measure", is_flag=True,
              help="With --registry: start vLLM offline on the registry and put the slot and adapter bytes its worker "
                   "allocated beside the formula; exit 1 when they differ by more than 5% (30-45 s).")
def command(registry_path: Path | None, tenants: int | None, tenants_per_engine: int | None, rank: int | None,
            max_loras: int | None, max_lora_rank: int | None, max_cpu_loras: int | None, gpu_gib: float,
            dtype_bytes: str | None, measure: bool) -> None:
    """Price consolidation: adapter bytes, slot memory, host cache, and GPUs saved versus one deployment per tenant.

    Prints every input with its source: option (given here), registry, or reference (the lab's Llama-2-7B figures).
    """
    console = Console(width=max(Console().width, 110))
    if measure and registry_path is None:
        raise click.BadParameter("--measure needs --registry (the engine runs that registry's base)",
                                 param_hint="'--measure'")
    registry_values = None
    if registry_path is None:
        shapes, base_bytes, base_name = llama2_7b_shapes(), LLAMA2_7B_BYTES, "Llama-2-7B (fp16)"
    else:
        registry = Registry.load(registry_path)
        shapes, base_bytes = LinearShapes.from_model_dir(registry.base_path), bytes_on_disk(registry.base_path)
        base_name = registry.base.name
        registry_values = registry_plan_values(registry)
        _reconcile(console, registry, shapes)
    options = {"tenants": tenants, "tenants_per_engine": tenants_per_engine, "adapter_rank": rank,
               "max_loras": max_loras, "max_lora_rank": max_lora_rank, "max_cpu_loras": max_cpu_loras,
               "dtype_bytes": int(dtype_bytes) if dtype_bytes else None}
    chosen = choose_inputs(options, registry_values)
    v = {key: sourced.value for key, sourced in chosen.items()}
    try:
        plan = make_plan(PlanInput(shapes=shapes, base_bytes=base_bytes, gpu_bytes=int(gpu_gib * GIB),
                                   **v))  # type: ignore[arg-type]
    except (ValueError, KeyError) as exc:
        raise click.BadParameter(str(exc).strip("'")) from None
    inputs = Table("input", "value", "source", title="planning inputs")
    for key, sourced in chosen.items():
        value = sourced.value
        inputs.add_row(key, ", ".join(value) if isinstance(value, tuple) else str(value), sourced.source)
    console.print(inputs)
    modules = "/".join(m.removesuffix("_proj") for m in v["target_modules"])  # type: ignore[attr-defined]
    table = Table("line item", "value", title=f"{v['tenants']} tenants on {base_name}, {gpu_gib:g} GiB GPUs")
    table.add_row("base weights (one copy per engine)", human_bytes(base_bytes))
    table.add_row(f"one adapter (r={v['adapter_rank']}, {modules}, {v['dtype_bytes']} B/weight)",
                  f"{human_bytes(plan.adapter_bytes)} (1/{base_bytes / plan.adapter_bytes:.0f} of the base)")
    table.add_row(f"slot reservation ({v['max_loras']} x r={v['max_lora_rank']}, every linear layer, embed, lm_head)",
                  human_bytes(plan.slot_bytes))
    table.add_row("host cache per engine (max_cpu_loras adapters)", human_bytes(plan.host_cache_bytes))
    table.add_row("left for KV cache per engine", human_bytes(plan.kv_bytes_per_engine))
    table.add_row("GPUs, dedicated (one deployment per tenant)", str(plan.dedicated_gpus))
    table.add_row(f"GPUs, consolidated ({plan.consolidated_engines} engine(s))", str(plan.consolidated_gpus))
    table.add_row("[bold]GPUs saved[/]", f"[bold]{plan.gpus_saved}[/]")
    console.print(table)
    if measure and registry_path is not None and registry_values is not None:
        if not _measured(console, registry_path, shapes, registry_values):
            raise SystemExit(1)


def _measured(console: Console, registry_path: Path, shapes: LinearShapes, values: dict[str, object]) -> bool:
    """The engine's own LoRA tensors beside the formula (the registry's knobs, not the options)."""
    from tenantserve.planning.memprobe import run_probe

    console.print("Starting vLLM offline to read its LoRA tensors (30-45 s, more on a busy machine) ...")
    got = run_probe(str(registry_path))
    knob = {k: int(values[k]) for k in ("max_loras", "max_lora_rank", "dtype_bytes")}  # type: ignore[call-overload]
    linear, vocab = slot_bytes(shapes, knob["max_loras"], knob["max_lora_rank"], knob["dtype_bytes"])
    measured = got["slot_bytes_by_module"]
    vocab_measured = sum(b for m, b in measured.items() if m in ("embed_tokens", "lm_head"))
    rows = [("slots: linear layers of every block", linear, got["slot_bytes"] - vocab_measured),
            ("slots: embed_tokens + lm_head", vocab, vocab_measured),
            ("slot reservation", linear + vocab, got["slot_bytes"])]
    registry = Registry.load(registry_path)
    for bill in adapter_bills(registry, shapes):
        formula_bytes = adapter_bytes(shapes, bill.config.target_modules, bill.config.rank, knob["dtype_bytes"])
        rows.append((f"adapter {bill.name}", formula_bytes, got["adapter_bytes"].get(bill.name, 0)))
    table = Table("item", "formula", "engine", "engine/formula", title="reconciled with the engine's tensors")
    ok = True
    for name, want, have in rows:
        ratio = have / want if want else float("inf")
        ok &= abs(ratio - 1) <= 0.05
        table.add_row(name, human_bytes(want), human_bytes(have), f"{ratio:.3f}")
    console.print(table)
    console.print("agree within 5%" if ok else "[bold red]the engine and the formula differ by more than 5%[/]")
    return ok


def _reconcile(console: Console, registry: Registry, shapes: LinearShapes) -> None:
    """Formula bytes beside bytes on disk for every registered adapter: the two must agree to a few percent."""
    table = Table("adapter", "rank", "formula", "on disk", "disk/formula", title="registered adapters, reconciled")
    for bill in adapter_bills(registry, shapes):
        table.add_row(bill.name, str(bill.config.rank), human_bytes(bill.formula_bytes), human_bytes(bill.disk_bytes),
                      f"{bill.disk_bytes / bill.formula_bytes:.3f}")
    console.print(table)
