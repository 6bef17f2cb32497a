"""The sidecar judges runtime adapters against the slots the launcher gave the engine (issue 11's bug).

One rule everywhere (``admission.judge``): a derived ``max_lora_rank`` comes from each admitted adapter's largest rank
(``rank_pattern`` included); a refused adapter never widens it, whatever its config says. The launcher, ``check`` and
the sidecar are each asked here. The engine test at the end onboards a rank-16 adapter on a real vLLM engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tenantserve.admission.admit import BaseFacts
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.judge import slot_rank, unjudged_rank
from tenantserve.admission.report import check_registry
from tenantserve.admission.store import AdapterStore
from tenantserve.demo.run import free_port
from tenantserve.engine.launch import plan_launch
from tenantserve.registry.knobs import derive_max_lora_rank
from tenantserve.registry.schema import Registry
from tests.lora_corpus import make_adapter, make_base
from tests.sidecar.serving import SidecarThread

MIXED = {"rank": 8, "module_ranks": {"q_proj": 16}, "config": {"rank_pattern": {"q_proj": 16}}}

#: Adapters whose config says rank 64 but that admission refuses: their rank must not size the slots.
UNADMITTABLE = {
    "config_lies": {"rank": 64, "module_ranks": {"q_proj": 8, "v_proj": 8}},  # weights of rank 8: shape_mismatch
    "foreign_base": {"rank": 64},  # pinned to another base: base_mismatch
    "modules_to_save": {"rank": 64, "config": {"modules_to_save": ["lm_head"]}},
}


def test_a_rank_pattern_sizes_the_slots_for_the_sidecar_as_for_the_launcher(
        write_registry: Callable[[dict], Path], make_adapter: Callable[..., Path]) -> None:
    """r: 8 with rank_pattern {q_proj: 16} and no max_lora_rank: rank-16 slots (the sidecar used the plain r and
    refused a rank-16 adapter as rank_too_high). Config only, no base: the rank read from the config."""
    mixed = make_adapter("mixed", rank=8, rank_pattern={"q_proj": 16})
    path = write_registry({"base": {"name": "b", "path": "base"},
                           "tenants": [{"id": "t", "adapters": [{"name": "mixed", "path": str(mixed)}]}]})
    registry = Registry.load(path, check_paths=False)
    assert derive_max_lora_rank([16]) == 16
    assert slot_rank(registry, None) == unjudged_rank(registry) == 16


def _world(tmp_path: Path, refused: str | None) -> tuple[Path, BaseFacts, FingerprintCache]:
    """A tiny real base, the ``mixed`` adapter and optionally one unadmittable adapter of config rank 64."""
    cache = FingerprintCache(tmp_path / "cache").load()
    facts = BaseFacts.read(make_base(tmp_path / "base"), cache=cache)
    pin = facts.fingerprint.value
    tenants = [{"id": "acme", "adapters": [{"name": "mixed", "path": "adapters/acme/mixed", "base_fingerprint": pin}]}]
    make_adapter(tmp_path / "adapters" / "acme" / "mixed", **MIXED)  # type: ignore[arg-type]
    if refused is not None:
        make_adapter(tmp_path / "adapters" / "globex" / "wide", **UNADMITTABLE[refused])  # type: ignore[arg-type]
        wide = {"name": "wide", "path": "adapters/globex/wide",
                "base_fingerprint": "sha256:" + "0" * 64 if refused == "foreign_base" else pin}
        tenants.append({"id": "globex", "adapters": [wide]})
    path = tmp_path / "adapters.yaml"
    path.write_text(json.dumps({"base": {"name": "tiny", "path": "base"}, "engine": {"max_loras": 2},
                                "security": {"auth": False}, "tenants": tenants}))
    return path, facts, cache


@pytest.mark.parametrize("refused", [None, *UNADMITTABLE])
def test_launcher_check_and_sidecar_derive_the_same_rank_from_the_admitted_adapters(
        tmp_path: Path, refused: str | None) -> None:
    path, facts, cache = _world(tmp_path, refused)
    registry = Registry.load(path)
    store = AdapterStore(tmp_path / "store", cache=cache)
    plan = plan_launch(registry, device="cpu", cache=cache, store=store)
    assert plan.knobs.rank_derived and plan.knobs.max_lora_rank == 16
    assert plan.argv[plan.argv.index("--max-lora-rank") + 1] == "16"
    assert [r.adapter for r in plan.refused] == ([] if refused is None else ["wide"])
    report = check_registry(registry, cache=cache)
    assert report.max_lora_rank == 16
    assert slot_rank(registry, facts, cache=cache, store=store) == 16
    if refused is not None:  # what the readable configs alone say: the old sidecar's rule
        assert unjudged_rank(registry) == 64


@pytest.mark.parametrize("refused", [None, "config_lies"])
def test_the_sidecar_onboards_up_to_the_launchers_rank_and_no_further(tmp_path: Path, refused: str | None) -> None:
    """Engine absent: a rank-16 adapter passes admission and fails only at the engine (502/503); a rank-32 one is
    refused as rank_too_high, even when a refused rank-64 config is registered."""
    path, facts, _ = _world(tmp_path, refused)
    pin = facts.fingerprint.value
    make_adapter(tmp_path / "adapters" / "acme" / "sixteen", rank=16)
    make_adapter(tmp_path / "adapters" / "acme" / "wider", rank=32)
    with SidecarThread(path, f"http://127.0.0.1:{free_port()}", reconcile=False) as sidecar, sidecar.client() as c:
        fits = c.post("/admin/tenants/acme/adapters", json={"name": "sixteen", "path": "sixteen",
                                                               "base_fingerprint": pin})
        too_wide = c.post("/admin/tenants/acme/adapters", json={"name": "wider", "path": "wider",
                                                                "base_fingerprint": pin})
    assert fits.status_code in (502, 503), fits.text
    assert fits.json()["error"]["code"] != "rank_too_high"
    assert too_wide.status_code == 400, too_wide.text
    assert too_wide.json()["error"]["code"] == "rank_too_high"
    assert "max_lora_rank 16" in too_wide.json()["error"]["message"]


@pytest.mark.engine
def test_a_rank_16_adapter_onboards_on_an_engine_whose_slots_a_rank_pattern_sized(tmp_path: Path) -> None:
    """The issue's case end to end: the embedded base, an adapter ``r: 8, rank_pattern: {q_proj: 16}``, no
    ``max_lora_rank``: the launcher starts vLLM with rank-16 slots and the sidecar onboards a rank-16 adapter (201),
    then a request through it answers."""
    from tests.conftest import DEFAULT_REGISTRY, EMBEDDED
    from tests.integration.engines import start_engine

    pin = Registry.load(DEFAULT_REGISTRY, check_paths=False).base.fingerprint
    shape = {"hidden": 128, "layers": 4, "inter": 384}
    make_adapter(tmp_path / "adapters" / "acme" / "mixed", **MIXED, **shape)  # type: ignore[arg-type]
    make_adapter(tmp_path / "adapters" / "acme" / "sixteen", rank=16, **shape)  # type: ignore[arg-type]
    path = tmp_path / "adapters.yaml"
    path.write_text(json.dumps({
        "base": {"name": "demo-base", "path": str(EMBEDDED / "base")},
        "engine": {"max_loras": 2, "max_model_len": 128, "dtype": "float32"}, "security": {"auth": False},
        "tenants": [{"id": "acme", "adapters": [{"name": "mixed", "path": "adapters/acme/mixed",
                                                 "base_fingerprint": pin}]}]}))
    running = start_engine(path, tmp_path / "engine.log")
    try:
        assert running.process.plan.knobs.max_lora_rank == 16
        with SidecarThread(path, running.url, reconcile=False) as sidecar, sidecar.client() as c:
            created = c.post("/admin/tenants/acme/adapters",
                             json={"name": "sixteen", "path": "sixteen", "base_fingerprint": pin})
            assert created.status_code == 201, created.text
            assert created.json()["state"] == "loaded"
        out = running.openai().completions.create(model="sixteen", prompt="Hello", max_tokens=2)
        assert out.choices[0].text is not None
    finally:
        running.stop()
