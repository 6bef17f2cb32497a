"""Is the engine serving the base the registry pins? Checked once at sidecar start and counted.

Uses admission's base verification when the admission module provides it; a registry without a pinned fingerprint
is counted as ``unpinned``.
"""

from __future__ import annotations

import logging

from tenantserve import admission
from tenantserve.errors import TenantserveError
from tenantserve.registry import Registry
from tenantserve.sidecar.metrics import SidecarMetrics

log = logging.getLogger("tenantserve.sidecar")


def check_served_base(registry: Registry, metrics: SidecarMetrics) -> str:
    """``match``, ``mismatch`` or ``unpinned``; a mismatch is logged (the engine keeps serving: the launcher refuses
    to start one on a foreign base, so this catches a base changed on disk under a running engine)."""
    if not registry.base.fingerprint:
        result = "unpinned"
    else:
        verify = getattr(admission, "verify_base", None)
        if verify is None:
            result = "unpinned"
        else:
            try:
                verify(registry)
                result = "match"
            except TenantserveError as exc:
                log.error("served base does not match the registry's pin: %s", exc)
                result = "mismatch"
    metrics.fingerprint_checks.labels(result).inc()
    return result
