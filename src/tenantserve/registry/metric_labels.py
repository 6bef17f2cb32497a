"""Prometheus label values bounded by the registry (STYLE 9): a tenant or adapter the registry names is its own
label value; anything else (a name a client made up, a runtime load nobody registered) is ``"other"``, so a hostile
caller cannot grow the series count. The placeholders are reserved tenant ids (``schema.RESERVED_TENANT_IDS``), so
no tenant's own series can be confused with them. The middleware, the vLLM plugin and the sidecar all label through
here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

#: Any name the registry does not know.
OTHER_LABEL = "other"
#: The ``tenant`` of a request refused before a key named a tenant.
ANONYMOUS_LABEL = "anonymous"


def bounded_label(name: str | None, known: Collection[str] | Mapping[str, object]) -> str:
    """``name`` when it is in ``known`` (the registry's names), else ``"other"`` (None included)."""
    return name if name is not None and name in known else OTHER_LABEL
