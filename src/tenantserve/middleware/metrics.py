"""Per-tenant request metrics, emitted inside vLLM's API server.

With ``PROMETHEUS_MULTIPROC_DIR`` set before Python starts (the launcher's job), the values go to the multiprocess
files and appear in vLLM's own ``/metrics``. Labels are bounded by the caller through ``registry.metric_labels``
(registry tenants and models, else ``anonymous``/``other``); the ``reason`` label takes only the middleware's fixed
set of refusal reasons.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Latency buckets for a tiny CPU model up to a 7B model on a GPU: 10 ms .. 2 min.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class TenantMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tenantserve_requests_total", "Tenant requests by outcome (HTTP status).",
            ["tenant", "model", "status"], registry=registry,
        )
        self.duration = Histogram(
            "tenantserve_request_duration_seconds", "Time from request to the end of the response (streams too).",
            ["tenant", "model"], buckets=BUCKETS, registry=registry,
        )
        self.in_flight = Gauge(
            "tenantserve_requests_in_flight", "Tenant requests being served now.",
            ["tenant"], multiprocess_mode="livesum", registry=registry,
        )
        self.auth_failures = Counter(
            "tenantserve_auth_failures_total", "Requests refused by the tenant middleware, by reason.",
            ["reason"], registry=registry,
        )
        self.rate_limited = Counter(
            "tenantserve_rate_limited_total", "Requests refused because the tenant had too many in flight.",
            ["tenant"], registry=registry,
        )
