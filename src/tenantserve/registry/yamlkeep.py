"""Rewrite a hand-written YAML file with new data while keeping its comments, key order and quoting.

The sidecar and ``tenantserve keys`` change the registry programmatically; operators write it by hand, with comments
that explain why a knob is what it is. ``merge_text`` loads the current file with ruamel.yaml's round-trip loader,
applies the new data onto that tree (changed values replaced, removed keys and list items deleted, new ones appended;
list items matched by their ``id`` or ``name``) and dumps it. The caller checks the result means exactly the new
data; whenever the file cannot be merged (not a mapping, list items reordered, ...) it returns None and the caller
writes plain YAML instead. Comments then are lost, never data.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

#: Keys that identify a list item across versions (tenants by id, adapters by name, api keys by id).
IDENTITY_KEYS = ("id", "name")


class _Unmergeable(Exception):
    pass


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 110
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def merge_text(old_text: str, full: dict[str, Any], minimal: dict[str, Any] | None = None) -> str | None:
    """``old_text`` with ``full``'s content and ``old_text``'s comments; None when that cannot be done safely.

    ``minimal`` is the same data without default values (pydantic's ``exclude_defaults``): a key the file does not
    have yet is only written when it is in ``minimal``, so a hand-written file does not fill up with defaults, and
    new list items (a new tenant, a new adapter) are written in their minimal form."""
    y = _yaml()
    try:
        tree = y.load(old_text)
        if not isinstance(tree, CommentedMap):
            return None
        _merge_map(tree, full, minimal if minimal is not None else full)
        out = io.StringIO()
        y.dump(tree, out)
    except Exception:  # a file ruamel cannot round-trip, or data it cannot place: plain YAML instead
        return None
    return out.getvalue()


def _merge(old: Any, full: Any, minimal: Any) -> Any:
    if isinstance(old, CommentedMap) and isinstance(full, dict):
        _merge_map(old, full, minimal if isinstance(minimal, dict) else {})  # not in minimal: all defaults
        return old
    if isinstance(old, CommentedSeq) and isinstance(full, list):
        _merge_seq(old, full, minimal if isinstance(minimal, list) and len(minimal) == len(full) else full)
        return old
    if isinstance(full, (dict, list)):
        return minimal if type(minimal) is type(full) else full
    if type(old) is type(full) and old == full:  # keep the original scalar (its quoting style)
        return old
    return full


def _merge_map(old: CommentedMap, full: dict[str, Any], minimal: dict[str, Any]) -> None:
    for key in [k for k in old if k not in full]:
        del old[key]
    for key, value in full.items():
        if key in old:
            old[key] = _merge(old[key], value, minimal.get(key))
        elif key in minimal:  # absent from the file and not a default: add it
            old[key] = minimal[key]


def _identity(items: list[Any]) -> str | None:
    for key in IDENTITY_KEYS:
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def _merge_seq(old: CommentedSeq, full: list[Any], minimal: list[Any]) -> None:
    key = _identity(list(old)) if old else _identity(full)
    if key is None or (full and _identity(full) != key):
        if len(old) != len(full):
            raise _Unmergeable("a list without item identities changed length")
        for i, value in enumerate(full):
            old[i] = _merge(old[i], value, minimal[i])
        return
    wanted = {item[key] for item in full}
    for i in reversed(range(len(old))):
        if old[i][key] not in wanted:
            del old[i]
    kept = [item[key] for item in old]
    if kept != [item[key] for item in full if item[key] in set(kept)]:
        raise _Unmergeable("list items were reordered")
    by_id = {item[key]: item for item in old}
    for value, small in zip(full, minimal, strict=True):
        if value[key] in by_id:
            _merge(by_id[value[key]], value, small)
        else:
            old.append(small if isinstance(small, dict) and key in small else value)
