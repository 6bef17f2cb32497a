"""What the engine itself allocates for LoRA: slot tensors and each loaded adapter's tensors, read in the worker.

``python -m tenantserve.planning.memprobe REGISTRY`` starts vLLM offline (``vllm.LLM``) with the registry's base and knobs,
runs one token through every adapter (so each is loaded into the host cache), then reads the worker's LoRA
manager: the bytes of every ``lora_a_stacked`` / ``lora_b_stacked`` tensor (the slot reservation) and of every
registered adapter's A/B matrices. Prints one JSON object. ``plan --measure`` puts these beside the formula.
Slow (an engine start: 30-45 s here); nothing is served.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _nbytes(value: Any) -> int:
    """Bytes of a tensor, or of the tensors in a (nested) list or tuple; None counts 0."""
    if value is None:
        return 0
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return value.numel() * value.element_size()


def measure(worker: Any) -> dict[str, Any]:
    """Runs inside the worker (``collective_rpc``): LoRA bytes as allocated."""
    manager = worker.model_runner.lora_manager._adapter_manager
    by_module: dict[str, int] = {}
    for module_name, module in manager.modules.items():
        kind = module_name.rsplit(".", 1)[-1]
        by_module[kind] = by_module.get(kind, 0) + sum(_nbytes(getattr(module, name, None))
                                                       for name in ("lora_a_stacked", "lora_b_stacked"))
    slots = sum(by_module.values())
    adapters = {str(lora_id): sum(_nbytes(w.lora_a) + _nbytes(w.lora_b) for w in model.loras.values())
                for lora_id, model in manager._registered_adapters.cache.items()}
    return {"slot_bytes": slots, "slot_bytes_by_module": by_module, "slots": manager.lora_slots,
            "adapter_bytes_by_id": adapters}


def probe(registry_path: str) -> dict[str, Any]:
    """In this process (imports vLLM, starts an offline engine): ``slot_bytes`` (int), ``slot_bytes_by_module``
    ({module suffix: bytes}), ``slots`` (``max_loras``), ``adapter_bytes`` ({adapter name: bytes of its A and B}).
    Raises what ``Registry.load`` and vLLM raise; ``run_probe`` is the contained way to call it."""
    from tenantserve.engine.entry import patch_version
    from tenantserve.planning.memory import registry_plan_values
    from tenantserve.registry.schema import Registry

    patch_version()
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    registry = Registry.load(registry_path)
    values = registry_plan_values(registry)
    knob = {k: int(values[k]) for k in ("max_loras", "max_lora_rank", "max_cpu_loras")}  # type: ignore[call-overload]
    llm = LLM(model=str(registry.base_path), enable_lora=True, max_loras=knob["max_loras"],
              max_lora_rank=knob["max_lora_rank"], max_cpu_loras=knob["max_cpu_loras"],
              max_model_len=registry.engine.max_model_len or 256, dtype=registry.engine.dtype,
              enforce_eager=True)
    ids = {}
    for i, (_, adapter) in enumerate(registry.adapters(), 1):
        ids[str(i)] = adapter.name
        llm.generate("hello", SamplingParams(max_tokens=1),
                     lora_request=LoRARequest(adapter.name, i, str(registry.adapter_path(adapter))), use_tqdm=False)
    result = llm.collective_rpc(measure)[0]
    result["adapter_bytes"] = {ids.get(k, k): v for k, v in result.pop("adapter_bytes_by_id").items()}
    return result


def main() -> None:
    """``python -m tenantserve.planning.memprobe REGISTRY``: prints ``MEMPROBE <json of probe()>`` on one line."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # our own offline engine: ``measure`` travels pickled
    result = probe(sys.argv[1])
    print("MEMPROBE " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()


def run_probe(registry_path: str, *, timeout: float = 900.0) -> dict[str, Any]:
    """``probe`` in a child process (vLLM stays out of the caller). Raises ``EngineError`` with the log's tail."""
    import subprocess

    from tenantserve.errors import EngineError

    try:
        done = subprocess.run([sys.executable, "-m", "tenantserve.planning.memprobe", registry_path], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineError(f"the engine did not measure its LoRA memory within {timeout:.0f} s") from None
    for line in done.stdout.splitlines():
        if line.startswith("MEMPROBE "):
            return json.loads(line.removeprefix("MEMPROBE "))
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
    raise EngineError(f"the engine exited with {done.returncode} before measuring its LoRA memory:\n{tail}")
