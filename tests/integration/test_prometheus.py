"""A real Prometheus (Debian's ``prometheus``, started here on loopback) scrapes a live engine and its sidecar,
evaluates deploy/prometheus/rules/*, and after a traffic run every recording rule and every Grafana panel's query
returns data, with values that match what the test sent.

The stack is this module's own: an engine with the tenant middleware (``security.auth`` on, a key per tenant), so the
per-tenant panels have data, and a sidecar (its reconciler, an onboarding operation).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml
from openai import OpenAI

from tenantserve.demo import embedded
from tenantserve.demo.run import free_port
from tests.conftest import ROOT
from tests.integration.engines import RunningEngine, copy_secured_registry, start_engine
from tests.integration.test_metrics_engine import queue_in_order
from tests.sidecar.serving import TOKEN, SidecarThread
from tests.waiting import wait_for

DEPLOY = ROOT / "deploy"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tenantserve.json"

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus package")


@dataclass
class Stack:
    engine: RunningEngine
    sidecar: SidecarThread
    keys: dict[str, str]
    prometheus: str

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]["result"]

    def client(self, tenant: str) -> OpenAI:
        return self.engine.openai(api_key=self.keys[tenant])


def prometheus_config(engine: RunningEngine, sidecar: SidecarThread) -> dict:
    """deploy/prometheus/prometheus.yml with this test's targets and a 1 s cadence."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(p) for p in RULE_FILES]
    targets = {"tenantserve-engine": engine.url, "tenantserve-sidecar": sidecar.url}
    for job in config["scrape_configs"]:
        job["static_configs"][0]["targets"] = [targets[job["job_name"]].removeprefix("http://")]
        job["static_configs"][0]["labels"] = {"engine": "test"}
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    path, keys = copy_secured_registry(tmp / "adapters.yaml")
    engine = start_engine(path, tmp / "engine.log",  # dev mode: /pause and /resume order the traffic
                          extra_env={"TENANTSERVE_ADMIN_TOKEN": TOKEN, "VLLM_SERVER_DEV_MODE": "1"})
    sidecar = SidecarThread(path, engine.url, reconcile=True, reconcile_interval=2.0)
    prom: subprocess.Popen[bytes] | None = None
    try:
        sidecar.start()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(engine, sidecar)))
        port = free_port()
        with (tmp / "prometheus.log").open("wb") as log:
            prom = subprocess.Popen(
                ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}"], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 60, "prometheus ready", tick=0.5)
        stack = Stack(engine, sidecar, keys, url)
        # a baseline before any traffic: rates need a sample from before it (scrapes may time out during it)
        wait_for(lambda: len(stack.query('count_over_time(tenantserve_lora_slot_hits_total[1m])')) > 0
                 and len(stack.query('count_over_time(tenantserve_adapters[1m])')) > 0, 60, "first scrapes", tick=0.5)
        yield stack
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()
        sidecar.stop()
        engine.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def traffic(stack: Stack) -> dict[str, int]:
    """Each tenant on its adapter: two hold both slots while the third's three prompts wait, then a few sequential
    requests (slot fills, CPU-cache copies, evictions). Returns requests sent per tenant."""
    owner = {a.name: t.id for t, a in stack.engine.registry.adapters()}
    a, b, c = owner  # sql (acme), pirate (globex), french (initech)
    clients = {name: stack.client(tenant) for name, tenant in owner.items()}
    queue_in_order(stack.engine, a, b, c, 3, client_for=clients, admin_headers={"Authorization": f"Bearer {TOKEN}"})
    sent = dict.fromkeys(owner.values(), 1)  # one request each; c's carries the three waiting prompts
    for name in (a, a, b, c):
        clients[name].completions.create(model=name, prompt=embedded.SQL_PROMPT, max_tokens=4, temperature=0)
        sent[owner[name]] += 1
    return sent


def rule_exprs() -> dict[str, str]:
    return {r["record"]: r["expr"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
            for r in g["rules"] if "record" in r}


def panel_queries() -> dict[str, str]:
    """Every dashboard target, with Grafana's variables as Grafana would send them for 'All engines'."""
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$engine", ".*")
            assert "$" not in expr, expr
            out[f"{panel['title']} [{t['refId']}]"] = expr
    return out


def test_rules_pass_promtool() -> None:
    out = subprocess.run(["promtool", "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(["promtool", "test", "rules", "tests/rules_test.yml"], capture_output=True, text=True,
                         cwd=DEPLOY / "prometheus")
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_and_panel_has_data_that_matches_the_traffic(stack: Stack) -> None:
    sent = traffic(stack)
    with stack.sidecar.client() as admin:  # one onboarding operation
        assert admin.post("/admin/tenants", json={"id": "prom-probe"}).status_code == 201

    queries = {**{f"rule {k}": k for k in rule_exprs()}, **{f"panel {k}": v for k, v in panel_queries().items()}}

    def empty() -> list[str]:
        return [name for name, expr in queries.items() if not stack.query(expr)]

    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = empty()
        return not missing

    try:
        wait_for(all_have_data, 90, "every recording rule and panel query to return data", tick=0.5)
    except AssertionError:
        probes = {q: stack.query(q) for q in ("up", "rate(tenantserve_lora_slot_hits_total[5m])",
                                               "rate(tenantserve_lora_slot_misses_total[5m])")}
        pytest.fail(f"no data for: {missing}; {json.dumps(probes)[:3000]}")

    reg = stack.engine.registry
    french, = (a.name for t, a in reg.adapters() if t.id == "initech")

    def value(expr: str) -> dict[str, float]:
        return {r["metric"].get("adapter") or r["metric"].get("tenant", ""): float(r["value"][1])
                for r in stack.query(expr)}

    seen: dict[str, object] = {}

    def settled() -> bool:
        seen["deferred"] = value('sum by (adapter) (tenantserve_lora_deferred_requests_total{engine="test"})')
        requests = value('sum by (tenant) (tenantserve_requests_total{engine="test"})')
        seen["requests"] = requests  # the sidecar's own calls (admin token) are counted too: compare our tenants
        return seen["deferred"].get(french) == 3 and {t: requests.get(t) for t in sent} == {  # type: ignore[union-attr]
            t: float(n) for t, n in sent.items()}

    try:
        wait_for(settled, 30, "Prometheus to show the defers and requests the test sent", tick=0.5)
    except AssertionError:
        pytest.fail(f"sent {sent}, Prometheus shows {seen}")
    deferred = value('sum by (adapter) (tenantserve_lora_deferred_requests_total{engine="test"})')
    assert {k: v for k, v in deferred.items() if v} == {french: 3.0}
    # the hit rate Prometheus records is hits / (hits + misses) as the engine counted them
    engine_text = httpx.get(f"{stack.engine.url}/metrics", timeout=10).text
    assert re.search(r"tenantserve_lora_slot_misses_total\{adapter=\"%s\"\} [1-9]" % french, engine_text)
    rate = value('engine_adapter:tenantserve_lora_slot_hit_rate:ratio_rate5m{engine="test"}')
    assert 0 < rate[french] < 1
