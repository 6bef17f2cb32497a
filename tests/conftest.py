"""Shared fixtures. The real-engine fixtures live in tests/integration/conftest.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "models" / "embedded"
DEFAULT_REGISTRY = ROOT / "configs" / "adapters.yaml"


@pytest.fixture(autouse=True, scope="session")
def _fingerprint_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Fingerprint caches (launcher, check, CLI subprocesses) go to a temp dir, never the user's ~/.cache."""
    import os

    old = os.environ.get("TENANTSERVE_CACHE_DIR")
    os.environ["TENANTSERVE_CACHE_DIR"] = str(tmp_path_factory.mktemp("fingerprint-cache"))
    yield
    if old is None:
        os.environ.pop("TENANTSERVE_CACHE_DIR", None)
    else:
        os.environ["TENANTSERVE_CACHE_DIR"] = old


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    """Write a minimal PEFT adapter directory (config only) for checks that never load weights."""

    def make(name: str, rank: int = 8, **config: object) -> Path:
        d = tmp_path / "adapters" / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
        cfg.update(config)
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        return d

    return make


@pytest.fixture
def write_registry(tmp_path: Path) -> Callable[[dict | str], Path]:
    """Write a registry (a dict, or raw YAML text) into tmp_path, with a base directory beside it."""
    (tmp_path / "base").mkdir(exist_ok=True)

    def write(content: dict | str) -> Path:
        path = tmp_path / "adapters.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write
