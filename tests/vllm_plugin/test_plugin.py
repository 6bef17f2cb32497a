"""The entry point as vLLM loads it: discovered, idempotent, lazy in the API server."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

PROBE = r"""
import json, sys
from vllm.plugins import load_plugins_by_group
plugins = load_plugins_by_group("vllm.general_plugins")
register = plugins["tenantserve"]
register(); register()
lazy = "vllm.v1.core.sched.scheduler" not in sys.modules and "vllm.lora.worker_manager" not in sys.modules
import vllm.lora.worker_manager as wm, vllm.v1.core.sched.scheduler as sch
from tenantserve.vllm_plugin.patching import is_wrapped
from tenantserve.vllm_plugin.slot_order import MARKER
add = wm.LRUCacheWorkerLoRAManager.add_adapter
chain, fn = [], wm.LRUCacheWorkerLoRAManager._apply_adapters
while fn is not None:
    chain.append(fn); fn = getattr(fn, "__wrapped__", None)
print(json.dumps({"order_once": sum(bool(getattr(f, MARKER, False)) for f in chain) == 1,"lazy": lazy, "worker": is_wrapped(add), "once": not is_wrapped(add.__wrapped__),
                  "scheduler": is_wrapped(sch.Scheduler.schedule),
                  "sched_once": not is_wrapped(sch.Scheduler.schedule.__wrapped__)}))
"""


def test_entry_point_is_registered() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert eps.get("tenantserve") == "tenantserve.vllm_plugin:register"


def test_register_twice_hooks_once_and_only_when_vllm_modules_load() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"order_once": True, "lazy": True, "worker": True, "once": True, "scheduler": True, "sched_once": True}
