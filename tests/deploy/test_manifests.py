"""The shipped deployment files parse, and the registry they carry is a valid tenantserve registry."""

from __future__ import annotations

from pathlib import Path

import yaml

from tenantserve.registry.schema import Registry
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "kubernetes"


def _docs() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def test_every_manifest_has_kind_and_namespace() -> None:
    docs = _docs()
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Deployment", "Service"}
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "tenantserve", d["metadata"]["name"]


def test_configmap_registry_validates() -> None:
    cm = next(d for d in _docs() if d["kind"] == "ConfigMap")
    reg = Registry.parse(cm["data"]["adapters.yaml"], source="configmap", root=Path("/"))
    assert reg.engine.max_loras == 8 and reg.engine.max_lora_rank == 16


def test_containers_run_tenantserve_commands_that_exist() -> None:
    from tenantserve.cli import main

    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert main.get_command(None, container["args"][0]) is not None, container["args"][0]


def test_the_kubernetes_scrape_config_finds_the_deployment() -> None:
    """Every pod selector of deploy/prometheus/prometheus-kubernetes.yml matches what the Deployment creates:
    its namespace, its ``app`` label, one named container port per job."""
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus-kubernetes.yml").read_text())
    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    jobs = {}
    for job in prom["scrape_configs"]:
        [sd] = job["kubernetes_sd_configs"]
        assert sd["role"] == "pod" and sd["namespaces"]["names"] == [deployment["metadata"]["namespace"]]
        keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
        assert keep["__meta_kubernetes_pod_label_app"] == pod["metadata"]["labels"]["app"]
        jobs[job["job_name"]] = keep["__meta_kubernetes_pod_container_port_name"]
    assert jobs == {"tenantserve-engine": "openai", "tenantserve-sidecar": "admin"} and set(jobs.values()) <= ports


METRICS_SECRET_MOUNT = "/etc/prometheus/secrets"  # where prometheus-operator mounts `spec.secrets`


def test_every_kubernetes_scrape_sends_the_metrics_token_the_pods_check() -> None:
    """Engines and sidecars answer /metrics off loopback only with TENANTSERVE_METRICS_TOKEN (the registry's
    metrics_token_env): every scrape job reads its bearer token from the mounted Secret the pods get it from."""
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus-kubernetes.yml").read_text())
    deployment = next(d for d in _docs() if d["kind"] == "Deployment")
    cm = next(d for d in _docs() if d["kind"] == "ConfigMap")
    env_name = Registry.parse(cm["data"]["adapters.yaml"], root=Path("/")).security.metrics_token_env
    refs = set()
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        [env] = [e for e in container["env"] if e["name"] == env_name]
        ref = env["valueFrom"]["secretKeyRef"]
        refs.add(f"{METRICS_SECRET_MOUNT}/{ref['name']}/{ref['key']}")
    assert len(refs) == 1 and len(deployment["spec"]["template"]["spec"]["containers"]) == 2
    [mounted] = refs
    for job in prom["scrape_configs"]:
        assert job["authorization"] == {"type": "Bearer", "credentials_file": mounted}, job["job_name"]
        assert "bearer_token" not in job and "credentials" not in job["authorization"]  # never inline


def test_the_kubernetes_scrape_config_passes_promtool_apart_from_discovery(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery; every other part of the file (globals, rule files,
    relabelling) is checked by promtool with the discovery swapped for a static target."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus)")
    source = ROOT / "deploy" / "prometheus"
    prom = yaml.safe_load((source / "prometheus-kubernetes.yml").read_text())
    prom["rule_files"] = [str(source / f) for f in prom["rule_files"]]
    token = tmp_path / "token"  # promtool checks the credentials file exists: the mounted Secret, here a file
    token.write_text("t")
    for job in prom["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
        assert job["authorization"]["credentials_file"].startswith(METRICS_SECRET_MOUNT)
        job["authorization"]["credentials_file"] = str(token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(prom))
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
