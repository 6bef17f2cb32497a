"""The served base, read once at sidecar start: its facts feed every admission, its pin check is counted.

A mismatch is logged, not fatal: the launcher refuses to start an engine on a foreign base, so this catches a base
changed on disk under a running engine; admissions then compare adapters against what is really there.
"""

from __future__ import annotations

import logging

from tenantserve.admission.admit import BaseFacts, verify_base
from tenantserve.errors import TenantserveError
from tenantserve.registry.schema import Registry
from tenantserve.sidecar.metrics import SidecarMetrics

log = logging.getLogger("tenantserve.sidecar")


def read_served_base(registry: Registry, metrics: SidecarMetrics) -> tuple[BaseFacts | None, str]:
    """(facts, result) with result ``match``, ``mismatch`` or ``unpinned`` (or ``unreadable``, not counted)."""
    try:
        facts = BaseFacts.read(registry.base_path)
        check = verify_base(registry, facts=facts)
    except TenantserveError as exc:
        log.error("cannot read the served base %s: %s", registry.base_path, exc)
        return None, "unreadable"
    if check.result == "mismatch":
        log.error("%s", check.message())
    elif check.result == "unpinned":
        log.warning("%s", check.message())
    metrics.fingerprint_checks.labels(check.result).inc()
    return facts, check.result
