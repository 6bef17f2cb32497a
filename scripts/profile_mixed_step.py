"""Where a mixed LoRA step's time goes: an in-process vLLM engine (``vllm.LLM``, EngineCore and worker in this
process) on the wide model of ``bench_mixed_batch.py``, timing every model step and profiling a workload.

One engine per run (``--engine off|stock|grouped``; ``off`` drops ``enable_lora``, ``stock`` sets
``TENANTSERVE_CPU_LORA_OPS=stock`` before vLLM imports the punica module). Each ``--load`` (``a``: LoRA off, only
with ``--engine off``; ``b``: every request on the base; ``c``: cycling over the base and 4 adapters) generates
``--requests`` x ``--tokens`` tokens (ignore_eos) in one ``LLM.generate`` call, ``--repeat`` times, and prints the
generated tokens/s and the median/min wall time of the decode steps (the worker's ``execute_model`` calls with
``--requests`` tokens). ``--profile`` runs one more pass under cProfile and prints its top functions by total and
cumulative time; ``--torch-profile`` does the same with ``torch.profiler`` (op level).

    .venv/bin/python scripts/profile_mixed_step.py --engine grouped --load b c [--model-dir DIR] [--profile]

``--model-dir`` reuses a directory made by an earlier run (``base/`` and ``adapters/a0..a3``); without it the model
is built into a temp dir (~25 s).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_mixed_batch as bench  # noqa: E402


def build(root: Path) -> Path:
    if not (root / "base" / "config.json").exists():
        bench.build_base(root / "base")
        for k in range(bench.ADAPTERS):
            bench.build_adapter(root / "adapters" / f"a{k}", seed=100 + k)
    return root


def step_timer(llm) -> list[tuple[int, float, float]]:  # type: ignore[no-untyped-def]
    """Wrap the in-process worker's ``execute_model``; the list fills with (scheduled tokens, wall seconds, this
    thread's CPU seconds) per step. With one torch thread (vLLM's CPU worker sets it in-process) the thread's CPU
    time is the step's work, which other load on the machine barely disturbs."""
    steps: list[tuple[int, float, float]] = []
    core = llm.llm_engine.engine_core.engine_core
    executor = core.model_executor
    worker = executor.driver_worker.worker if hasattr(executor, "driver_worker") else None
    target = worker.model_runner if worker is not None else None
    if target is None:
        raise SystemExit(f"no in-process worker found on {type(executor).__name__}")
    original: Callable = target.execute_model

    def timed(scheduler_output, *args, **kwargs):  # type: ignore[no-untyped-def]
        began, cpu = time.perf_counter(), time.thread_time()
        out = original(scheduler_output, *args, **kwargs)
        steps.append((scheduler_output.total_num_scheduled_tokens, time.perf_counter() - began,
                      time.thread_time() - cpu))
        return out

    target.execute_model = timed
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("off", "stock", "grouped", "masked"), required=True)
    ap.add_argument("--load", nargs="+", choices=("a", "b", "c"), default=None)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--profile", action="store_true", help="one more pass per load under cProfile")
    ap.add_argument("--torch-profile", action="store_true", help="one more pass per load under torch.profiler")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    loads = args.load or (["a"] if args.engine == "off" else ["b", "c"])

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.engine != "off":
        os.environ["TENANTSERVE_CPU_LORA_OPS"] = "grouped" if args.engine == "grouped" else args.engine
    root = build(args.model_dir or Path(tempfile.mkdtemp(prefix="profile-mixed-")))

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    kw = dict(model=str(root / "base"), dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    if args.engine != "off":
        kw.update(enable_lora=True, max_loras=bench.ADAPTERS, max_lora_rank=bench.RANK, max_cpu_loras=bench.ADAPTERS)
    llm = LLM(**kw)
    loras = [LoRARequest(f"a{k}", k + 1, str(root / "adapters" / f"a{k}")) for k in range(bench.ADAPTERS)]
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    steps = step_timer(llm)
    import torch

    print(f"torch threads in the worker: {torch.get_num_threads()}", flush=True)

    def run(load: str) -> float:
        mixed = [None, *loras]
        reqs = [mixed[i % len(mixed)] if load == "c" else None for i in range(args.requests)]
        prompts = [bench.PROMPT] * args.requests
        began = time.perf_counter()
        outs = llm.generate(prompts, params, lora_request=reqs if load == "c" else None, use_tqdm=False)
        took = time.perf_counter() - began
        return sum(len(o.outputs[0].token_ids) for o in outs) / took

    run("c" if args.engine != "off" else "a")  # warm-up: adapters into their slots
    for load in loads:
        rates, wall, cpu = [], [], []
        for _ in range(args.repeat):
            steps.clear()
            rates.append(run(load))
            wall += [w for n, w, _ in steps if n == args.requests]
            cpu += [c for n, _, c in steps if n == args.requests]
        print(f"{args.engine:<8} ({load}) tok/s best {max(rates):7.1f} median {statistics.median(rates):7.1f} | "
              f"decode step ms: wall median {1e3 * statistics.median(wall):6.1f} min {1e3 * min(wall):6.1f}, "
              f"cpu median {1e3 * statistics.median(cpu):6.1f} min {1e3 * min(cpu):6.1f} ({len(wall)} steps)",
              flush=True)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(load)
            prof.disable()
            for key in ("tottime", "cumulative"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
                print(f"--- cProfile ({args.engine}, load {load}) by {key}\n" + buf.getvalue()[-12000:], flush=True)
        if args.torch_profile:
            import torch.profiler as tp

            with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
                run(load)
            print(f"--- torch.profiler ({args.engine}, load {load})\n"
                  + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top), flush=True)


if __name__ == "__main__":
    main()
