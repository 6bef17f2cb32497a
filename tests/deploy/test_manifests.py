"""The shipped deployment files parse, and the registry they carry is a valid tenantserve registry."""

from __future__ import annotations

from pathlib import Path

import yaml

from tenantserve.registry import Registry
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
        assert container["args"][0] in main.commands, container["args"][0]
