"""Engine-side metrics: what vLLM does not export about LoRA slots, the CPU cache and scheduler defers.

The counters are created by the vLLM plugin inside EngineCore and the workers; with ``PROMETHEUS_MULTIPROC_DIR``
set (the launcher gives every engine start a fresh one, see ``make_multiproc_dir``) prometheus_client writes them
to files and vLLM's own ``/metrics`` in the API server aggregates them beside ``vllm:*``.
Every metric takes an injected registry so tests read a fresh ``CollectorRegistry``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tenantserve.registry.metric_labels import OTHER_LABEL

#: The environment variable prometheus_client reads (at import time) to switch to multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: From ~1 ms (CPU cache -> slot on a small adapter) to seconds (a large adapter read from network storage).
LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class EngineMetrics:
    """The engine plugin's metrics (names agreed across the team; never the ``vllm:`` prefix)."""

    slot_hits: Counter
    slot_misses: Counter
    slot_evictions: Counter
    cpu_cache_hits: Counter
    disk_loads: Counter
    load_seconds: Histogram
    defers: Counter
    deferred_requests: Counter
    slots_used: Gauge
    slots_total: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> EngineMetrics:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["adapter"], registry=registry)

        return cls(
            slot_hits=counter(
                "tenantserve_lora_slot_hits", "Steps in which a scheduled adapter was already in a slot."
            ),
            slot_misses=counter(
                "tenantserve_lora_slot_misses", "Steps in which a scheduled adapter had to be put into a slot first."
            ),
            slot_evictions=counter(
                "tenantserve_lora_slot_evictions", "Times the adapter was pushed out of its slot (LRU) for another."
            ),
            cpu_cache_hits=counter(
                "tenantserve_lora_cpu_cache_hits", "Slot fills served from host memory (no disk read)."
            ),
            disk_loads=counter(
                "tenantserve_lora_disk_loads", "Slot fills that read the adapter from disk (cold loads, API loads)."
            ),
            load_seconds=Histogram(
                "tenantserve_lora_load_seconds",
                "Time to put an adapter into a slot, by where its weights came from.",
                ["source"],
                buckets=LOAD_BUCKETS,
                registry=registry,
            ),
            defers=counter(
                "tenantserve_lora_defers",
                "Scheduler steps in which a waiting request for the adapter was skipped: every slot held another.",
            ),
            deferred_requests=counter(
                "tenantserve_lora_deferred_requests", "Distinct requests deferred at least once for lack of a slot."
            ),
            slots_used=Gauge(
                "tenantserve_lora_slots_used", "Adapter slots holding an adapter.",
                multiprocess_mode="livemax", registry=registry,
            ),
            slots_total=Gauge(
                "tenantserve_lora_slots_total", "Adapter slots (max_loras).",
                multiprocess_mode="livemax", registry=registry,
            ),
        )

    def touch(self, adapters: list[str]) -> None:
        """Create every adapter's series at 0 (and ``other``'s, see ``registry.metric_labels``), so rates and ratios
        exist before the first event."""
        per_adapter = (self.slot_hits, self.slot_misses, self.slot_evictions, self.cpu_cache_hits,
                       self.disk_loads, self.defers, self.deferred_requests)
        for name in [*adapters, OTHER_LABEL]:
            for metric in per_adapter:
                metric.labels(name)
        for source in ("disk", "cpu_cache"):
            self.load_seconds.labels(source)


def make_multiproc_dir(environ: Mapping[str, str]) -> Path:
    """A fresh, empty metrics directory for one engine start.

    Files left by an earlier run would be summed into the new run's counters, so every start gets its own.
    When the operator already set ``PROMETHEUS_MULTIPROC_DIR`` (e.g. a Kubernetes emptyDir), the fresh directory
    is created inside it; otherwise in the system temp dir. The caller removes it when the engine is gone.
    """
    parent = environ.get(MULTIPROC_ENV) or None
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="tenantserve-metrics-", dir=parent))


def per_label(exposition: str, sample: str, label: str = "adapter") -> dict[str, float]:
    """Values of one sample name from a ``/metrics`` text, keyed by one label (summed over the others).

    For tests, benchmarks and the demo: what an engine says now, to diff against what was sent."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == sample:
                key = s.labels.get(label, "")
                out[key] = out.get(key, 0.0) + s.value
    return out
