"""tenantserve's vLLM general plugin: LoRA slot and defer metrics from inside the engine, and two fixes: vLLM's
CPU LoRA ops applying an adapter to base-model tokens in mixed batches (``cpu_lora_fix``), and a step evicting an
adapter from its slot that the same step needs (``slot_order``).

Registered as the ``tenantserve`` entry point of ``vllm.general_plugins``; vLLM calls ``register()`` in the API
server, in EngineCore and in every worker. Nothing is imported or counted eagerly: the scheduler hook attaches
when ``vllm.v1.core.sched.scheduler`` is imported (EngineCore), the slot hooks when ``vllm.lora.worker_manager`` is
(workers; only with ``--enable-lora``). So the plugin costs the API server nothing and is a no-op without LoRA.
Registering twice attaches once.

- ``slots``: slot hits, misses, evictions and load times, counted around vLLM's LRU adapter manager (workers).
- ``defers``: requests deferred because the step's adapter slots were full, per adapter (EngineCore).
- ``metrics``: the counters themselves; ``labels``: adapter names bounded by the registry (else ``other``).
- ``cpu_lora_fix``, ``lora_delta``: vLLM's CPU LoRA ops replaced (base rows get no delta; one grouped matmul pair
  per distinct adapter).
- ``slot_order``: a step's resident adapters are activated first, so it never evicts one it needs.
- ``patching``: attaching to vLLM once a module is imported, never twice, never fatally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType

from prometheus_client import REGISTRY, CollectorRegistry

from tenantserve.settings import REGISTRY_ENV
from tenantserve.vllm_plugin import defers, slot_order, slots
from tenantserve.vllm_plugin.labels import AdapterLabels
from tenantserve.vllm_plugin.metrics import MULTIPROC_ENV, EngineMetrics
from tenantserve.vllm_plugin.patching import is_wrapped, when_imported

SCHEDULER_MODULE = "vllm.v1.core.sched.scheduler"
#: Workers on CPU: vLLM's CPU LoRA ops (cpu_lora_fix).
PUNICA_CPU_MODULE = "vllm.lora.punica_wrapper.punica_cpu"
WORKER_MANAGER_MODULE = "vllm.lora.worker_manager"
#: API server: where vLLM picks a request's adapter (tenantserve.middleware.adapter_guard).
SERVING_MODULE = "vllm.entrypoints.serve.engine.serving"


@dataclass
class EnginePlugin:
    """Metrics and labels are built on first use, in the process that counts (never in the API server)."""

    registry_path: Path | None
    collector_registry: CollectorRegistry
    installed: list[str] = field(default_factory=list)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | os._Environ[str]) -> EnginePlugin:
        path = environ.get(REGISTRY_ENV)
        # Multiprocess mode writes values to files whatever the registry: a private one avoids clashes. Without it
        # (an in-process engine), the default registry is the one vLLM's /metrics serves.
        registry = CollectorRegistry() if environ.get(MULTIPROC_ENV) else REGISTRY
        return cls(Path(path) if path else None, registry)

    @cached_property
    def labels(self) -> AdapterLabels:
        return AdapterLabels.from_registry(self.registry_path)

    @cached_property
    def metrics(self) -> EngineMetrics:
        metrics = EngineMetrics.create(self.collector_registry)
        metrics.touch(sorted(self.labels.known))
        self.labels.on_new = metrics.touch  # registered later (sidecar, hand edit): series at zero at once
        return metrics

    def attach_scheduler(self, module: ModuleType) -> None:
        if not is_wrapped(module.Scheduler.schedule):  # checked first: building metrics twice would clash
            defers.install(module.Scheduler, defers.DeferRecorder(self.metrics, self.labels))
            self.installed.append("scheduler")

    def attach_worker(self, module: ModuleType) -> None:
        if slot_order.install(module.LRUCacheWorkerLoRAManager):
            self.installed.append("slot_order")
        if not is_wrapped(module.LRUCacheWorkerLoRAManager.add_adapter):
            slots.install(module.LRUCacheWorkerLoRAManager, slots.SlotRecorder(self.metrics, self.labels))
            self.installed.append("worker")

    def hook(self) -> None:
        when_imported(PUNICA_CPU_MODULE, _fix_cpu_lora_ops)
        when_imported(SCHEDULER_MODULE, self.attach_scheduler)
        when_imported(WORKER_MANAGER_MODULE, self.attach_worker)
        when_imported(SERVING_MODULE, _guard_adapter_selection)


def _fix_cpu_lora_ops(module: ModuleType) -> None:
    """Imported here, not with the package: the ops need torch, and importing ``vllm_plugin.patching`` (the
    middleware, the CLI) must not cost torch's import."""
    from tenantserve.vllm_plugin import cpu_lora_fix

    cpu_lora_fix.install_everywhere(module)


def _guard_adapter_selection(module: ModuleType) -> None:
    """The only adapter a request runs is its ``model``, even on an engine without the tenant middleware."""
    from tenantserve.middleware import adapter_guard

    adapter_guard.install(module)


def register() -> None:
    """The entry point vLLM calls (possibly several times per process)."""
    EnginePlugin.from_environ(os.environ).hook()
