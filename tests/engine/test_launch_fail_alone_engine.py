"""A bad adapter fails alone on a real engine: after a restart with two broken adapters in the registry (weights cut
short, a config that is not JSON), the engine starts with the others and they answer exactly as before. (A missing
directory is the same kind of refusal: tests/engine/test_launcher.py, through the CLI.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest

from tenantserve.demo import embedded
from tenantserve.registry.schema import AdapterSpec, Registry, TenantSpec
from tests.conftest import EMBEDDED
from tests.integration.engines import copy_registry, start_engine

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(not (EMBEDDED / "base").is_dir(), reason="embedded model not built yet")]


def test_engine_starts_without_the_refused_adapters_and_serves_the_good_ones(tmp_path: Path) -> None:
    path = copy_registry(tmp_path / "adapters.yaml")
    reg = Registry.load(path)
    broken = tmp_path / "broken"
    shutil.copytree(EMBEDDED / "adapters" / "sql", broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a download cut short
    fp = reg.tenants[0].adapters[0].base_fingerprint
    reg.tenants.append(TenantSpec(id="hooli", adapters=[
        AdapterSpec(name="hooli-sql", path=broken, base_fingerprint=fp),
        AdapterSpec(name="hooli-chat", path=tmp_path / "chat", base_fingerprint=fp)]))
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "adapter_config.json").write_text('{"r": 8,')  # unreadable: not JSON
    reg.save(path)

    running = start_engine(path, tmp_path / "engine.log")
    try:
        refused = running.process.plan.refused
        assert [(r.adapter, r.tenant, r.code) for r in refused] == [
            ("hooli-sql", "hooli", "weights_truncated"), ("hooli-chat", "hooli", "config_invalid")]
        client = running.openai()
        served = {m.id for m in client.models.list().data}
        assert served == {reg.base.name, "sql", "pirate", "french"}
        out = client.completions.create(model=embedded.SQL_ADAPTER, prompt=embedded.SQL_PROMPT, max_tokens=24,
                                        temperature=0)
        assert out.choices[0].text.strip() == embedded.SQL_ON_SQL
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="hooli-sql", prompt=embedded.SQL_PROMPT, max_tokens=4)
    finally:
        running.stop()
