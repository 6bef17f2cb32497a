"""The sidecar's own Prometheus metrics, on an injected ``CollectorRegistry`` (never the ``vllm:`` prefix).

Label values are bounded: operations and results are fixed vocabularies, states are the four adapter states.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OPERATIONS = ("onboard_tenant", "offboard_tenant", "onboard_adapter", "offboard_adapter", "issue_key", "revoke_key")
STATES = ("desired", "loading", "loaded", "failed")
FINGERPRINT_RESULTS = ("match", "mismatch", "unpinned")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SidecarMetrics:
    """Every metric the sidecar exports; one instance per app, registered on the registry it is given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.operations = Counter(
            "tenantserve_sidecar_operations", "Admin operations by outcome.", ("operation", "result"),
            registry=registry,
        )
        self.operation_seconds = Histogram(
            "tenantserve_sidecar_operation_seconds", "Wall time of admin operations.", ("operation",),
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.warmup_seconds = Histogram(
            "tenantserve_adapter_warmup_seconds",
            "One-token warm-up completion through a freshly loaded adapter: the cold cost a first request would pay.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.reconcile_runs = Counter(
            "tenantserve_reconcile_runs",
            "Reconciler passes by outcome (ok, error, engine_down, engine_unverified, registry_invalid).",
            ("result",), registry=registry,
        )
        self.reconcile_errors = Counter(
            "tenantserve_reconcile_errors", "Adapter loads/unloads that failed inside reconciler passes.",
            registry=registry,
        )
        self.adapters = Gauge("tenantserve_adapters", "Registered adapters by state.", ("state",), registry=registry)
        self.fingerprint_checks = Counter(
            "tenantserve_base_fingerprint_checks", "Served base checked against the registry's pinned fingerprint.",
            ("result",), registry=registry,
        )
        for state in STATES:
            self.adapters.labels(state).set(0)
        for result in FINGERPRINT_RESULTS:
            self.fingerprint_checks.labels(result)

    def set_states(self, counts: dict[str, int]) -> None:
        for state in STATES:
            self.adapters.labels(state).set(counts.get(state, 0))
