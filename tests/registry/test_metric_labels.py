"""One rule for every bounded metric label: the registry's names pass, anything else is ``other``."""

from __future__ import annotations

from tenantserve.registry.metric_labels import ANONYMOUS_LABEL, OTHER_LABEL, bounded_label
from tenantserve.registry.schema import RESERVED_TENANT_IDS


def test_bounded_label_keeps_known_names_and_collapses_the_rest() -> None:
    known = frozenset({"sql", "pirate"})
    assert bounded_label("sql", known) == "sql"
    assert bounded_label("evil-'name'", known) == OTHER_LABEL
    assert bounded_label(None, known) == OTHER_LABEL
    assert bounded_label("", known) == OTHER_LABEL
    assert bounded_label("acme", {"acme": object()}) == "acme"  # a mapping: its keys are the names


def test_the_placeholders_are_reserved_tenant_ids() -> None:
    """A tenant named like a placeholder would share its series."""
    assert {OTHER_LABEL, ANONYMOUS_LABEL} <= RESERVED_TENANT_IDS
