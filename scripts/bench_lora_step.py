"""One decode step's LoRA work on the wide model of ``bench_mixed_batch.py``, against the same step's base matmuls.

The layers of that model (hidden 2048, intermediate 5632, 4 layers; float32) as vLLM wraps them: per layer
``qkv_proj`` (3 slices), ``o_proj``, ``gate_up_proj`` (2 slices) and ``down_proj``, each one
``PunicaWrapperCPU.add_lora_linear`` call with the real wrapper and ``max_loras`` 4 rank-16 slots. A step is the
metadata update (``update_metadata``, what vLLM's LoRA manager runs once per step) and the 16 calls, on
``--rows`` decode rows cycling over the base and the 4 adapters (``--adapters 0``: every row on the base; vLLM's v1
runner marks every step as prefill, so the sgmv path and its ``no_lora`` short cut are what an engine runs). The base
is the same 16 layers' ``F.linear``. Each implementation (``TENANTSERVE_CPU_LORA_OPS``) is installed the way the
plugin installs it, outputs are checked against the masked ops, and the implementations are timed in turns, best
of ``--repeat`` bursts.

    .venv/bin/python scripts/bench_lora_step.py [--rows 20] [--adapters 4] [--clock cpu|wall] [--repeat 7]

``--clock cpu`` (default) is this process's CPU time with one torch thread: the work, which other load on a shared
machine barely disturbs; ``wall`` uses ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lora_delta import CLOCKS, _burst, installed  # noqa: E402

HIDDEN, INTER, LAYERS, RANK, SLOTS = 2048, 5632, 4, 16, 4
MODULES = {"qkv_proj": (HIDDEN, (HIDDEN, HIDDEN, HIDDEN)), "o_proj": (HIDDEN, (HIDDEN,)),
           "gate_up_proj": (HIDDEN, (INTER, INTER)), "down_proj": (INTER, (HIDDEN,))}
MODES = ("stock", "masked", "grouped")


def make_layers(dtype: torch.dtype, seed: int = 0) -> list[tuple[torch.Tensor, tuple, tuple, tuple[int, ...]]]:
    """(base weight, lora_a_stacked, lora_b_stacked, output_slices) per wrapped module, vLLM's shapes."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(LAYERS):
        for d_in, outs in MODULES.values():
            w = (torch.randn(sum(outs), d_in, generator=g) / d_in**0.5).to(dtype)
            a = tuple((torch.randn(SLOTS, 1, RANK, d_in, generator=g) / d_in**0.5).to(dtype) for _ in outs)
            b = tuple((torch.randn(SLOTS, 1, o, RANK, generator=g) / RANK).to(dtype) for o in outs)
            layers.append((w, a, b, outs))
    return layers


def mapping_for(rows: int, adapters: int) -> tuple[int, ...]:
    """LoRA ids per row (0: base), cycling over the base and ``adapters`` adapters."""
    return tuple(i % (adapters + 1) for i in range(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--adapters", type=int, default=4, help="0..4; rows cycle over the base and these")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads with --clock wall")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = ap.parse_args()
    torch.set_num_threads(1 if args.clock == "cpu" else args.threads)
    clock = CLOCKS[args.clock]
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16

    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    layers = make_layers(dtype)
    g = torch.Generator().manual_seed(1)
    x_hidden = torch.randn(args.rows, HIDDEN, generator=g).to(dtype)
    x_inter = torch.randn(args.rows, INTER, generator=g).to(dtype)
    inputs = [x_inter if w.shape[1] == INTER else x_hidden for w, *_ in layers]
    ids = mapping_for(args.rows, args.adapters)
    mapping = LoRAMapping(ids, ids, is_prefill=True)  # vLLM 0.32's v1 runner: always the prefill (sgmv) path
    wrapper = PunicaWrapperCPU(8192, 256, "cpu")
    slot_ids = list(range(1, SLOTS + 1))

    def base() -> None:
        for (w, *_), x in zip(layers, inputs):
            torch.nn.functional.linear(x, w)

    outs = [torch.nn.functional.linear(x, w) for (w, *_), x in zip(layers, inputs)]

    def lora_step(results: list[torch.Tensor] | None = None) -> None:
        wrapper.update_metadata(mapping, slot_ids, SLOTS + 1, 1024)
        for k, ((_, a, b, slices), x) in enumerate(zip(layers, inputs)):
            y = outs[k] if results is None else results[k]
            wrapper.add_lora_linear(y, x, a, b, 1.0, slices)

    check: dict[str, list[torch.Tensor]] = {}
    for mode in args.modes:
        with installed(mode):
            check[mode] = [o.clone() for o in outs]
            lora_step(check[mode])
    base_rows = torch.tensor([i == 0 for i in ids])
    for mode in args.modes:
        if mode != "stock":
            for got, want, ref in zip(check[mode], check.get("masked", check[mode]), outs):
                assert torch.equal(got[base_rows], ref[base_rows]), f"{mode} touched a base row"
                assert torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-4), f"{mode} differs"

    kinds: list[str] = ["base", *args.modes]
    fns: dict[str, Callable[[], object]] = {"base": base}
    best_times = {k: float("inf") for k in kinds}
    for round_ in range(args.repeat + 1):
        for kind in kinds if round_ % 2 else kinds[::-1]:
            if kind == "base":
                t = _burst(base, clock, calls=3)
            else:
                with installed(kind):
                    t = _burst(lambda: lora_step(), clock, calls=3)
            if round_:
                best_times[kind] = min(best_times[kind], t)
    threads = torch.get_num_threads()
    print(f"{args.rows} rows over the base + {args.adapters} adapters, {args.dtype}, {threads} thread(s), "
          f"{args.clock} clock, best of {args.repeat}: one step's 16 LoRA layers (metadata + add_lora_linear)")
    print(f"  base matmuls of the step: {best_times['base'] * 1e3:7.2f} ms")
    for mode in args.modes:
        print(f"  LoRA, {mode:<8}          {best_times[mode] * 1e3:7.2f} ms = {best_times[mode] / best_times['base']:.3f}x")


if __name__ == "__main__":
    main()
