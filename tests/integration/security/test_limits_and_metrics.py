"""One tenant cannot hold every slot (429 + Retry-After); per-tenant metrics appear in vLLM's own /metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tenantserve.vllm_plugin.metrics import per_label
from tests.integration.security.conftest import ADMIN_TOKEN, SecuredEngine, wait_until


def _long(secured: SecuredEngine, key: str, model: str) -> httpx.Response:
    with secured.client(key, timeout=120) as c:
        return c.post("/v1/completions", json={"model": model, "prompt": "Bonjour", "max_tokens": 48,
                                               "min_tokens": 48, "temperature": 0})


def _in_flight(secured: SecuredEngine) -> dict[str, float]:
    with secured.client(None) as c:  # /metrics is open on loopback
        return per_label(c.get("/metrics").text, "tenantserve_requests_in_flight", "tenant")


def test_in_flight_limit_is_per_tenant(secured: SecuredEngine) -> None:
    """initech may have 1 request in flight: while it is, its next requests get 429; acme's requests at the same time
    are not affected; once it is done, initech is served again. The engine's scheduler is paused (vLLM's dev route,
    admin token) so the first request stays in flight for as long as the test needs, whatever the machine's speed."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with secured.client(None) as c:
        assert c.post("/pause", params={"mode": "keep"}, headers=admin).status_code == 200
    try:
        with ThreadPoolExecutor(3) as pool:
            held = pool.submit(_long, secured, secured.keys["initech"], "french")
            wait_until(lambda: _in_flight(secured).get("initech") == 1, timeout=30)
            limited = [_long(secured, secured.keys["initech"], "french") for _ in range(2)]  # refused at once
            others = [pool.submit(_long, secured, secured.keys["acme"], "sql") for _ in range(2)]
            wait_until(lambda: _in_flight(secured).get("acme") == 2, timeout=30)  # admitted beside initech's
            with secured.client(None) as c:
                assert c.post("/resume", headers=admin).status_code == 200
            assert held.result(timeout=120).status_code == 200
            assert [f.result(timeout=120).status_code for f in others] == [200, 200]
    finally:
        with secured.client(None) as c:
            c.post("/resume", headers=admin)
    assert [r.status_code for r in limited] == [429, 429]
    assert all(1 <= int(r.headers["retry-after"]) <= 30 and r.json()["error"]["code"] == "rate_limited"
               for r in limited)  # computed and jittered: test_surface_openai
    assert _long(secured, secured.keys["initech"], "french").status_code == 200


def test_tenant_metrics_in_vllm_metrics(secured: SecuredEngine) -> None:
    with secured.client(secured.keys["acme"]) as c:
        c.post("/v1/completions", json={"model": "sql", "prompt": "x", "max_tokens": 1})
        c.post("/v1/completions", json={"model": "pirate", "prompt": "x", "max_tokens": 1})
    with secured.client("tsk-nope") as c:
        c.post("/v1/completions", json={"model": "anything-unbounded-123", "prompt": "x"})
    with secured.client(None) as c:
        text = c.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("tenantserve_requests_total", tenant="acme", model="sql", status="200") >= 1
    assert value("tenantserve_requests_total", tenant="acme", model="other", status="404") >= 1
    assert value("tenantserve_auth_failures_total", reason="invalid_key") >= 1
    assert value("tenantserve_request_duration_seconds_count", tenant="acme", model="sql") >= 1
    assert value("tenantserve_requests_in_flight", tenant="acme") == 0
    assert "tenantserve_rate_limited_total" in text
    assert "anything-unbounded-123" not in text and "vllm:tenantserve" not in text
