"""One real engine per test session, started from a copy of the default registry (max_loras=2, three adapters).

Tests that must crash or reconfigure an engine start their own with ``engines.start_engine``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.engines import RunningEngine, copy_registry, start_engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    tmp = tmp_path_factory.mktemp("engine")
    # vLLM activates a step's adapters in set order, i.e. by hash(adapter name): seed 1 gives the order that makes
    # LRU slots thrash without the plugin's slot_order fix (sql before pirate, french before sql), which
    # test_metrics_engine.test_third_adapter_waits_while_two_others_hold_the_slots checks does not happen.
    running = start_engine(copy_registry(tmp / "adapters.yaml"), tmp / "engine.log",
                           extra_env={"PYTHONHASHSEED": "1", "VLLM_SERVER_DEV_MODE": "1"})  # dev: /pause, /resume
    yield running
    running.stop()
