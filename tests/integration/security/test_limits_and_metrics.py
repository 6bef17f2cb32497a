"""One tenant cannot hold every slot (429 + Retry-After); per-tenant metrics appear in vLLM's own /metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.security.conftest import SecuredEngine


def _long(secured: SecuredEngine, key: str, model: str) -> httpx.Response:
    with secured.client(key, timeout=120) as c:
        return c.post("/v1/completions", json={"model": model, "prompt": "Bonjour", "max_tokens": 48,
                                               "min_tokens": 48, "temperature": 0})


def test_in_flight_limit_is_per_tenant(secured: SecuredEngine) -> None:
    """initech may have 1 request in flight: while its stream is open, its next requests get 429; acme's requests at
    the same time are not affected; once the stream is done, initech is served again."""
    # ~600 KB of events (20 logprobs a token) that this client does not read: more than loopback's socket buffers,
    # so the response cannot finish, and the request stays in flight, until the client reads it
    body = {"model": "french", "prompt": "Bonjour", "max_tokens": 230, "temperature": 0, "stream": True,
            "ignore_eos": True, "logprobs": 20}
    with secured.client(secured.keys["initech"], timeout=120) as held:
        with held.stream("POST", "/v1/completions", json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data:"))  # admitted and generating: in flight
            limited = [_long(secured, secured.keys["initech"], "french") for _ in range(2)]
            others = [_long(secured, secured.keys["acme"], "sql") for _ in range(2)]
            for _ in lines:
                pass
    assert [r.status_code for r in limited] == [429, 429]
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "rate_limited" for r in limited)
    assert [r.status_code for r in others] == [200, 200]
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
