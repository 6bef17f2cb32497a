"""End to end: generated tokens/s of a wide model with LoRA off, LoRA on with every request on the base, and four
adapters mixed with the base, each with vLLM 0.32's stock CPU LoRA ops and with tenantserve's grouped ones.

The model is made here with a fixed seed into a temp dir (nothing committed): a random-weight Llama, hidden 2048,
intermediate 5632, 4 layers, 16 heads, the embedded tokenizer (models/embedded/base), float32; and four random
rank-16 PEFT adapters on every projection. Engines start through the launcher (plan_launch + EngineProcess, like the
tests), one alive at a time, in ABBA order over rounds: off, stock, tenantserve, tenantserve, stock, off.

- LoRA off: the launcher's argv without ``--enable-lora``, ``--max-loras``, ``--max-lora-rank``, ``--max-cpu-loras``
  and ``--lora-modules`` (every other flag the same).
- stock: ``TENANTSERVE_CPU_LORA_OPS=stock`` in the engine's environment (the plugin leaves vLLM's ops alone; the
  mixed-batch leak is back, so never outside a benchmark).
- tenantserve: the plugin as installed by default.

Each workload sends ``--requests`` concurrent completions of ``--tokens`` tokens (ignore_eos) and measures generated
tokens/s; (b) sends them all to the base, (c) cycles them over the base and the four adapters (max_loras 4).

    .venv/bin/python scripts/bench_mixed_batch.py [--rounds 2] [--requests 20] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tenantserve.admission.fingerprint import fingerprint  # noqa: E402
from tenantserve.demo.run import free_port  # noqa: E402
from tenantserve.engine.launch import LaunchPlan, plan_launch  # noqa: E402
from tenantserve.engine.process import EngineProcess  # noqa: E402
from tenantserve.registry.schema import Registry  # noqa: E402
from tenantserve.vllm_plugin.cpu_lora_fix import MODE_ENV  # noqa: E402

TOKENIZER = ROOT / "models" / "embedded" / "base"
HIDDEN, INTER, LAYERS, HEADS, RANK, ADAPTERS = 2048, 5632, 4, 16, 16, 4
ATTN, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
PROMPT = "List 3 fruits:"
LORA_FLAGS = {"--max-loras", "--max-lora-rank", "--max-cpu-loras"}


def shapes() -> dict[str, tuple[int, int]]:
    """(out, in) of every projection."""
    return {**{m: (HIDDEN, HIDDEN) for m in ATTN}, "gate_proj": (INTER, HIDDEN), "up_proj": (INTER, HIDDEN),
            "down_proj": (HIDDEN, INTER)}


def build_base(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    config = json.loads((TOKENIZER / "config.json").read_text())
    vocab = config["vocab_size"]
    t = {"model.embed_tokens.weight": torch.randn(vocab, HIDDEN, generator=g) * 0.02,
         "model.norm.weight": torch.ones(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for m, (out, inp) in shapes().items():
            t[f"{p}{'self_attn' if m in ATTN else 'mlp'}.{m}.weight"] = torch.randn(out, inp, generator=g) / inp**0.5
        t[f"{p}input_layernorm.weight"] = torch.ones(HIDDEN)
        t[f"{p}post_attention_layernorm.weight"] = torch.ones(HIDDEN)
    path.mkdir(parents=True)
    save_file(t, str(path / "model.safetensors"))
    config.update(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=HEADS, head_dim=HIDDEN // HEADS, max_position_embeddings=512)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    for f in TOKENIZER.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            (path / f.name).write_bytes(f.read_bytes())
    return path


def build_adapter(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    t = {}
    for i in range(LAYERS):
        for m, (out, inp) in shapes().items():
            p = f"base_model.model.model.layers.{i}.{'self_attn' if m in ATTN else 'mlp'}.{m}."
            t[p + "lora_A.weight"] = torch.randn(RANK, inp, generator=g) / inp**0.5
            t[p + "lora_B.weight"] = torch.randn(out, RANK, generator=g) * 0.01
    path.mkdir(parents=True)
    save_file(t, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": RANK, "lora_dropout": 0.0,
        "bias": "none", "target_modules": list(shapes()), "base_model_name_or_path": "wide-base"}))
    return path


def build_registry(root: Path) -> Registry:
    base = build_base(root / "base")
    fp = fingerprint(base).value
    adapters = [build_adapter(root / "adapters" / f"a{k}", seed=100 + k) for k in range(ADAPTERS)]
    doc = {"version": 1, "base": {"name": "wide-base", "path": str(base), "fingerprint": fp},
           "engine": {"max_loras": ADAPTERS, "max_cpu_loras": ADAPTERS, "max_model_len": 512, "dtype": "float32"},
           "security": {"auth": False},
           "tenants": [{"id": f"t{k}", "adapters": [{"name": p.name, "path": str(p), "base_fingerprint": fp}]}
                       for k, p in enumerate(adapters)]}
    (root / "adapters.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return Registry.load(root / "adapters.yaml")


def without_lora(argv: list[str]) -> list[str]:
    """The launcher's argv with every LoRA flag removed (and nothing else)."""
    out, skip_values = [], False
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if skip_values and not arg.startswith("--"):
            continue
        skip_values = False
        if arg == "--enable-lora":
            continue
        if arg in LORA_FLAGS:
            next(it)
            continue
        if arg == "--lora-modules":
            skip_values = True
            continue
        out.append(arg)
    return out


def start(registry: Registry, log: Path, engine: str) -> tuple[EngineProcess, str]:
    port = free_port()
    plan: LaunchPlan = plan_launch(registry, port=port)
    extra = {}
    if engine == "off":
        plan = replace(plan, argv=without_lora(plan.argv))
    elif engine == "stock":
        extra[MODE_ENV] = "stock"
    url = f"http://127.0.0.1:{port}"
    proc = EngineProcess(plan, base_url=url, log_path=log, extra_env=extra)
    proc.start()
    try:
        proc.wait_ready(900)
    except BaseException:
        proc.stop()
        raise
    return proc, url


def workload(url: str, models: list[str], requests: int, tokens: int) -> float:
    """Generated tokens per second for ``requests`` concurrent completions spread over ``models``."""
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900)

    def one(i: int) -> int:
        r = client.completions.create(model=models[i % len(models)], prompt=PROMPT, max_tokens=tokens,
                                      temperature=0, extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    began = time.perf_counter()
    with ThreadPoolExecutor(requests) as pool:
        total = sum(pool.map(one, range(requests)))
    return total / (time.perf_counter() - began)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each: off, stock, tenantserve x2, stock, off)")
    ap.add_argument("--requests", type=int, default=20, help="concurrent completions per workload")
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens per completion")
    args = ap.parse_args()
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
        root = Path(tmp)
        os.environ["TENANTSERVE_CACHE_DIR"] = str(root / "cache")  # fingerprints and adapter copies stay in tmp
        registry = build_registry(root)
        base = registry.base.name
        adapters = [a.name for _, a in registry.adapters()]
        mixed = [base, *adapters]
        order = ["off", "stock", "tenantserve", "tenantserve", "stock", "off"]
        for rnd in range(args.rounds):
            for pos, engine in enumerate(order):
                proc, url = start(registry, root / f"engine-{rnd}-{pos}-{engine}.log", engine)
                try:
                    workload(url, mixed if engine != "off" else [base], 4, 8)  # warm-up: adapters into slots
                    loads = ["a"] if engine == "off" else (["b", "c"] if pos < 3 else ["c", "b"])
                    for load in loads:
                        tps = workload(url, mixed if load == "c" else [base], args.requests, args.tokens)
                        key = "(a) off" if load == "a" else f"({load}) {engine}"
                        samples.setdefault(key, []).append(tps)
                        print(f"round {rnd} {engine:<11} {key:<16} {tps:8.1f} tok/s", flush=True)
                finally:
                    proc.stop()
    off = statistics.median(samples["(a) off"])
    print(f"\nmedian tokens/s over {args.rounds} rounds ({args.requests} x {args.tokens} tokens; min-max in brackets)")
    print("| workload | vLLM stock ops | tenantserve ops |")
    print("|---|---|---|")
    print(f"| (a) LoRA off | {off:.1f} [{min(samples['(a) off']):.0f}-{max(samples['(a) off']):.0f}] | same |")
    for load, label in (("b", "(b) LoRA on, all on the base"), ("c", "(c) 4 adapters + base mixed")):
        cells = []
        for engine in ("stock", "tenantserve"):
            s = samples[f"({load}) {engine}"]
            cells.append(f"{statistics.median(s):.1f} [{min(s):.0f}-{max(s):.0f}] = {statistics.median(s) / off:.2f}x")
        print(f"| {label} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
