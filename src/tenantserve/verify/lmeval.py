"""``verify --lm-eval TASK_YAML``: the same comparison through lm-evaluation-harness instead of our own prompts.

One local task file (its ``data_files`` relative to the file) is evaluated twice: ``hf`` with ``peft=`` (the
dedicated side, float32) and ``local-completions`` against the engine (the consolidated side, while companions
hold other tenants' adapters and the base in the batch, as in ``consolidated``). Every metric must be equal.
Needs ``pip install lm-eval`` (not a dependency of tenantserve).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tenantserve.bearer import bearer_header
from tenantserve.errors import TenantserveError
from tenantserve.verify.prompts import PromptsError


class LmEvalMissing(TenantserveError):
    """``--lm-eval`` without lm-evaluation-harness (and its API client) installed."""

    code = "lm_eval_missing"
    exit_code = 2


class LmEvalFailed(TenantserveError):
    """lm-eval raised while running a side (most often: the engine refused or dropped its requests)."""

    code = "lm_eval_failed"
    exit_code = 3


_INSTALL = "--lm-eval needs lm-evaluation-harness with its API client: pip install 'lm-eval[api]'"


@dataclass(frozen=True)
class LmEvalResult:
    """One task evaluated on both sides: a row per metric, and the companions that shared the engine's batch."""

    task: Path
    rows: list[MetricRow]
    companions: tuple[str, ...]
    mixed_with: tuple[str, ...]  # companions that ran for the whole consolidated run
    companion_restarts: int = 0  # companions that reached the end of the context and were started again

    @property
    def ok(self) -> bool:
        """At least one metric, and every one equal on both sides."""
        return bool(self.rows) and all(r.passed for r in self.rows)


@dataclass(frozen=True)
class MetricRow:
    """One lm-eval metric (``exact_match``, ``acc``: its name without the filter) with its value on each side."""

    metric: str
    dedicated: float
    consolidated: float

    @property
    def passed(self) -> bool:
        """Equal on both sides (within 1e-9: the same answers give the same score)."""
        return abs(self.dedicated - self.consolidated) <= 1e-9


def load_task(path: Path) -> dict[str, Any]:
    """The task file as an lm-eval config dict, its local ``data_files`` made absolute. Raises ``PromptsError``."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PromptsError(f"{path}: cannot read the lm-eval task: {exc}", code="task_invalid") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise PromptsError(f"{path}: an lm-eval task file needs a 'task' name", code="task_invalid")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        config["dataset_kwargs"]["data_files"] = {k: str((path.parent / v).resolve()) for k, v in files.items()}
    elif isinstance(files, str):
        config["dataset_kwargs"]["data_files"] = str((path.parent / files).resolve())
    return config


@dataclass
class Prepared:
    """An lm-eval model and task, built before the run (tokenizers loaded, tasks indexed): the timed part is then
    only the requests."""

    lm: Any
    tasks: list[Any]
    name: str


def task_manager() -> Any:
    """lm-eval's task index (slow to build: share it between both sides)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LmEvalMissing(_INSTALL) from None
    return TaskManager()


def prepare(task: dict[str, Any], model: str, model_args: dict[str, Any], task_manager: Any = None) -> Prepared:
    """Build the model and the task. ``task_manager``: reuse one (lm-eval indexes its thousands of tasks each)."""
    try:
        from lm_eval.api.registry import get_model
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise LmEvalMissing(_INSTALL) from None
    try:
        lm = get_model(model).create_from_arg_obj(model_args, {"batch_size": 1})
        task_dict = get_task_dict([dict(task)], task_manager or TaskManager())
    except ImportError as exc:
        raise LmEvalMissing(f"{_INSTALL} ({exc})") from None
    except Exception as exc:  # lm-eval's own errors: a bad task file, a model it cannot load
        raise LmEvalFailed(f"lm-eval could not set up '{model}' on task {task['task']!r}: {exc}") from None
    return Prepared(lm, list(task_dict.values()), task["task"])


#: The LM methods through which lm-eval sends every request.
REQUEST_METHODS = ("generate_until", "loglikelihood", "loglikelihood_rolling")


def evaluate(prepared: Prepared, around: Callable[[], AbstractContextManager[Any]] | None = None) -> dict[str, float]:
    """One lm-eval run; its numeric metrics (``exact_match,none`` -> ``exact_match``), stderr left out.
    ``around``: a context entered around each batch of requests (on this LM instance only), not lm-eval's setup."""
    from lm_eval import simple_evaluate

    if around is not None:
        for name in REQUEST_METHODS:
            setattr(prepared.lm, name, _wrapped(getattr(prepared.lm, name), around))

    try:
        results = simple_evaluate(model=prepared.lm, tasks=prepared.tasks, log_samples=False, bootstrap_iters=0)
    except Exception as exc:  # a third-party run: any failure becomes one line, never a traceback
        raise LmEvalFailed(f"lm-eval failed on task {prepared.name!r}: {exc}") from None
    metrics = (results or {}).get("results", {}).get(prepared.name, {})
    return {k.split(",")[0]: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k
            and not k.startswith("sample_len")}


def _wrapped(method: Callable[..., Any], around: Callable[[], AbstractContextManager[Any]]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with around():
            return method(*args, **kwargs)

    return call


def dedicated_args(base_dir: Path, adapter_dir: Path | None) -> dict[str, Any]:
    """lm-eval's ``hf`` model arguments: the base in float32 on CPU, with the adapter through peft when given."""
    args: dict[str, Any] = {"pretrained": str(base_dir), "dtype": "float32", "device": "cpu"}
    if adapter_dir is not None:
        args["peft"] = str(adapter_dir)
    return args


def consolidated_args(url: str, model: str, tokenizer_dir: Path, token: str | None) -> dict[str, Any]:
    """lm-eval's ``local-completions`` model arguments: ``model`` on the engine at ``url``, tokenized locally from
    ``tokenizer_dir``, with ``token`` as the bearer key when given."""
    args: dict[str, Any] = {"base_url": f"{url}/v1/completions", "model": model, "tokenizer": str(tokenizer_dir),
                            "tokenizer_backend": "huggingface", "num_concurrent": 4, "max_retries": 1}
    if token:
        args["header"] = bearer_header(token)
    return args


def compare_metrics(dedicated: dict[str, float], consolidated: dict[str, float]) -> list[MetricRow]:
    """A row per dedicated metric, sorted by name; one the consolidated side lacks is NaN there (so it fails)."""
    return [MetricRow(name, dedicated[name], consolidated.get(name, float("nan"))) for name in sorted(dedicated)]
