"""``verify``: one model, dedicated vs consolidated, prompt by prompt.

Resolves what to compare from the registry, runs the dedicated side in this process, runs the consolidated side on
the given engine (or on one started from the registry for the run and stopped after), and compares (``compare``).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantserve.errors import AdapterError, TenantserveError
from tenantserve.registry.schema import Registry
from tenantserve.verify import lmeval
from tenantserve.verify.compare import Generation, PromptDiff, compare, default_tolerance
from tenantserve.verify.consolidated import Consolidated, EngineResult
from tenantserve.verify.dedicated import DedicatedModel
from tenantserve.verify.lmeval import LmEvalResult, load_task
from tenantserve.verify.prompts import PromptCase, PromptsError, default_prompts_path, load_prompts


class AdminTokenMissing(TenantserveError):
    """A secured engine was named but no admin token is set (exit 2)."""

    code = "admin_token_missing"
    exit_code = 2


@dataclass(frozen=True)
class VerifyRequest:
    """What to verify. ``engine_url`` None: start an engine from the registry for the run."""

    model: str
    registry_path: Path
    engine_url: str | None = None
    prompts: Path | None = None
    dedicated_base: Path | None = None
    top_k: int = 5
    tolerance: float | None = None
    engine_log: Path = Path(".tenantserve/verify-engine.log")
    ready_timeout: float = 300.0
    engine_env: dict[str, str] = field(default_factory=dict)
    lm_eval_task: Path | None = None


@dataclass(frozen=True)
class PromptReport:
    """One prompt: both sides' generations, the verdict, and the companions that shared the engine's batch."""

    case: PromptCase
    dedicated: Generation
    consolidated: Generation
    diff: PromptDiff
    companions: tuple[str, ...]
    mixed_with: tuple[str, ...]

    @property
    def mixed(self) -> bool:
        """Every companion ran in the engine's batch for this request's whole life."""
        return bool(self.companions) and set(self.mixed_with) == set(self.companions)


@dataclass(frozen=True)
class VerifyReport:
    """The whole run for one model (an adapter, or the base when ``is_base``); ``tolerance`` in nats."""

    model: str
    is_base: bool
    dedicated_base: Path
    engine_url: str
    tolerance: float
    top_k: int
    rows: list[PromptReport]
    lm_eval: LmEvalResult | None = None

    @property
    def ok(self) -> bool:
        """Every prompt passed, and the lm-eval task too when one ran."""
        return all(r.diff.passed for r in self.rows) and (self.lm_eval is None or self.lm_eval.ok)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data (``verify --json``)."""
        return {
            "model": self.model, "is_base": self.is_base, "dedicated_base": str(self.dedicated_base),
            "engine_url": self.engine_url, "tolerance": self.tolerance, "top_k": self.top_k, "ok": self.ok,
            "prompts": [{
                "prompt": r.case.prompt, "max_tokens": r.case.max_tokens, "passed": r.diff.passed,
                "agreed_tokens": r.diff.agreed, "diverged_at": r.diff.diverged_at,
                "max_logprob_diff": r.diff.max_logprob_diff, "reason": r.diff.reason,
                "dedicated": r.dedicated.text, "consolidated": r.consolidated.text,
                "dedicated_tokens": r.dedicated.token_ids, "consolidated_tokens": r.consolidated.token_ids,
                "companions": list(r.companions), "mixed_with": list(r.mixed_with),
            } for r in self.rows],
            "lm_eval": None if self.lm_eval is None else {
                "task": str(self.lm_eval.task), "ok": self.lm_eval.ok, "companions": list(self.lm_eval.companions),
                "mixed_with": list(self.lm_eval.mixed_with), "companion_restarts": self.lm_eval.companion_restarts,
                "metrics": [{"metric": m.metric, "dedicated": m.dedicated, "consolidated": m.consolidated,
                             "passed": m.passed} for m in self.lm_eval.rows],
            },
        }


def companions_for(registry: Registry, model: str, served: list[str]) -> list[str]:
    """Models to mix into the target's batches: the base (for an adapter) and as many other adapters as the slots
    hold beside it, in registry order, among those the engine serves. Pure."""
    is_base = model == registry.base.name
    slots = registry.engine.max_loras - (0 if is_base else 1)
    others = [a.name for _, a in registry.adapters() if a.name != model and a.name in served][:slots]
    base = [] if is_base or registry.base.name not in served else [registry.base.name]
    return base + others


def resolve_prompts(request: VerifyRequest, registry: Registry) -> list[PromptCase]:
    """``--prompts``, else the registry's default set; with an lm-eval task alone, no prompts is fine."""
    if request.prompts is not None:
        return load_prompts(request.prompts)
    path = default_prompts_path(registry.source, request.model)
    if (path is None or not path.is_file()) and request.lm_eval_task is not None:
        return []
    if path is None or not path.is_file():
        raise PromptsError(f"no prompt set for '{request.model}': pass --prompts FILE (JSON lines, "
                           f"{{\"prompt\": ..., \"max_tokens\": ...}}) or create {path}")
    return load_prompts(path)


def verify(request: VerifyRequest, *, progress: Callable[[str], None] = lambda _: None) -> VerifyReport:
    """Run both sides and compare. Raises typed errors: bad input (exit 2), engine unreachable or not starting (3)."""
    registry = Registry.load(request.registry_path)
    is_base = request.model == registry.base.name
    found = registry.find_adapter(request.model)
    if not is_base and found is None:
        known = ", ".join([registry.base.name] + [a.name for _, a in registry.adapters()])
        raise AdapterError(f"no adapter '{request.model}' in {request.registry_path} (known: {known})",
                           code="adapter_unknown")
    cases = resolve_prompts(request, registry)
    base_dir = request.dedicated_base or registry.base_path
    adapter_dir = None if found is None else registry.adapter_path(found[1])
    token = _admin_token(registry)
    if registry.security.auth and request.engine_url is not None and token is None:
        raise AdminTokenMissing(f"the registry has security.auth on: set {registry.security.admin_token_env} to "
                                "the engine's admin token")

    task = load_task(request.lm_eval_task) if request.lm_eval_task is not None else None
    dedicated_model = DedicatedModel(base_dir, adapter_dir)
    dedicated_model.check()
    with _engine(request, registry, token, progress) as (url, token):
        client = Consolidated(url, api_key=token, top_k=request.top_k)
        served = client.served_models()  # fails fast (exit 3) before the slow dedicated side
        if request.model not in served:
            raise AdapterError(f"the engine at {url} does not serve '{request.model}'", code="model_not_served")
        client.check_lengths(request.model, cases)
        companions = companions_for(registry, request.model, served)
        progress(f"dedicated: {base_dir}" + (f" + {adapter_dir}" if adapter_dir else "") +
                 " (transformers, float32, greedy)")
        dedicated = [dedicated_model.load().generate(c, top_k=request.top_k) for c in cases] if cases else []
        del dedicated_model
        progress(f"consolidated: {url}, '{request.model}' mixed with {', '.join(companions) or 'nothing'}")
        consolidated: list[EngineResult] = client.run(request.model, cases, companions)
        lm_eval = None if task is None else _lm_eval(request, task, client, companions, base_dir, adapter_dir,
                                                     cases[0].prompt if cases else "Hello", progress)
        engine_label = url if request.engine_url else f"{url}, started for this run"

    tolerance = request.tolerance if request.tolerance is not None else \
        default_tolerance(registry.engine.dtype, _config_dtype(registry.base_path))
    rows = [PromptReport(case, d, c.generation, compare(d, c.generation, tolerance=tolerance), c.companions,
                         c.mixed_with) for case, d, c in zip(cases, dedicated, consolidated)]
    return VerifyReport(request.model, is_base, base_dir, engine_label, tolerance,
                        request.top_k, rows, lm_eval)


def _lm_eval(request: VerifyRequest, task: dict[str, Any], client: Consolidated, companions: list[str],
             base_dir: Path, adapter_dir: Path | None, companion_prompt: str,
             progress: Callable[[str], None]) -> LmEvalResult:
    """The task through lm-eval on both sides; the consolidated run inside mixed batches."""
    assert request.lm_eval_task is not None
    progress(f"lm-eval {request.lm_eval_task}: dedicated (hf, peft)")
    tasks = lmeval.task_manager()
    dedicated = lmeval.evaluate(lmeval.prepare(task, "hf", lmeval.dedicated_args(base_dir, adapter_dir), tasks))
    progress("lm-eval: consolidated (local-completions) mixed with " + (", ".join(companions) or "nothing"))
    prepared = lmeval.prepare(task, "local-completions",
                              lmeval.consolidated_args(client.url, request.model, base_dir, client.api_key), tasks)
    batches: list[list[Any]] = []

    @contextmanager
    def mixed() -> Iterator[None]:
        with client.mixed_batch(companions, companion_prompt) as running:
            yield
            batches.append([(c.model, c.ran_throughout(), c.restarts) for c in running])

    consolidated = lmeval.evaluate(prepared, around=mixed)
    throughout = {m for m in companions if batches and all(ok for b in batches for name, ok, _ in b if name == m)}
    mixed_with = tuple(m for m in companions if m in throughout)
    restarts = sum(r for b in batches for _, _, r in b)
    return LmEvalResult(request.lm_eval_task, lmeval.compare_metrics(dedicated, consolidated), tuple(companions),
                        mixed_with, restarts)


def _admin_token(registry: Registry) -> str | None:
    return os.environ.get(registry.security.admin_token_env) or None


@contextmanager
def _engine(request: VerifyRequest, registry: Registry, token: str | None,
            progress: Callable[[str], None]) -> Iterator[tuple[str, str | None]]:
    """The engine to talk to: the given URL, or one started from the registry on a free port and stopped after."""
    if request.engine_url is not None:
        yield request.engine_url.rstrip("/"), token if registry.security.auth else None
        return
    from tenantserve.demo.run import free_port
    from tenantserve.engine.launch import plan_launch
    from tenantserve.engine.process import EngineProcess

    port = free_port()
    env = dict(request.engine_env)
    if registry.security.auth:  # our own engine: our own admin token when none is set
        token = token or "tsverify-" + secrets.token_hex(24)
        env[registry.security.admin_token_env] = token
    plan = plan_launch(registry, port=port)
    url = f"http://127.0.0.1:{port}"
    engine = EngineProcess(plan, base_url=url, log_path=request.engine_log, extra_env=env)
    progress(f"starting the engine from {request.registry_path} (log: {request.engine_log})")
    took = engine.start_ready(request.ready_timeout)
    try:
        progress(f"engine ready in {took:.1f} s")
        yield url, token if registry.security.auth else None
    finally:
        engine.stop()


def _config_dtype(base_dir: Path) -> str | None:
    try:
        config = json.loads((base_dir / "config.json").read_text())
        dtype = config.get("dtype") or config.get("torch_dtype")
    except (OSError, ValueError, AttributeError):
        return None
    return dtype if isinstance(dtype, str) else None
