"""Test-only fault injection: an engine started with this folder on PYTHONPATH runs each scheduler step 20 ms slower
while the file named by ``TENANTSERVE_TEST_SLOW_STEPS`` exists. The toy model generates 230 tokens in a fraction of a
second; slowed, a test can observe requests mid-generation (and pause the scheduler there) on any machine.

Python imports ``sitecustomize`` at start-up in every process with this folder on its path (the API server, EngineCore);
the hook attaches when vLLM's scheduler module is imported, like the tenantserve plugin's.
"""

import os
import time

FLAG = os.environ.get("TENANTSERVE_TEST_SLOW_STEPS")
DELAY = 0.02

if FLAG:
    from tenantserve.vllm_plugin.patching import when_imported

    def _slow(module):  # type: ignore[no-untyped-def]
        original = module.Scheduler.schedule

        def schedule(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if os.path.exists(FLAG):
                time.sleep(DELAY)
            return original(self, *args, **kwargs)

        module.Scheduler.schedule = schedule

    when_imported("vllm.v1.core.sched.scheduler", _slow)
