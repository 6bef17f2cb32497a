"""Rewrite a hand-written YAML file with new data while keeping its comments, key order and quoting.

The sidecar and ``tenantserve keys`` change the registry programmatically; operators write it by hand, with comments
that explain why a knob is what it is. ``merge_text`` loads the current file with ruamel.yaml's round-trip loader,
applies the new data onto that tree (changed values replaced, removed keys and list items deleted, new ones appended;
list items matched by their ``id`` or ``name``) and dumps it. The caller checks the result means exactly the new
data; whenever the file cannot be merged (not a mapping, list items reordered, ...) it returns None and the caller
writes plain YAML instead. Comments then are lost, never data.

``splice_text`` is the fast path for one change to a large file: it rewrites only the top-level sections and list
items (tenants) whose data changed, each through the same round trip on just its own lines, and copies every other
line as it is. Its cost follows the size of the change, not of the file. Same contract: the caller checks the result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from tenantserve.registry.yamlpos import YamlDocument

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
    if isinstance(old, datetime) and isinstance(full, str) and _same_instant(old, full):
        return old  # the file's unquoted timestamp, not the JSON dump's string
    return full


def _same_instant(old: datetime, text: str) -> bool:
    try:
        new = datetime.fromisoformat(text)
    except ValueError:
        return False
    return (old.tzinfo is None) == (new.tzinfo is None) and old == new


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


#: The key a list item is wrapped under while its own lines go through the round trip.
_WRAP = "k:\n"


@dataclass(frozen=True)
class Spliced:
    """The new text, and the YAML data it holds when that is proven region by region (``None``: parse it all)."""

    text: str
    data: dict[str, Any] | None


def splice_text(old: YamlDocument, old_text: str, before: dict[str, Any], full: dict[str, Any],
                minimal: dict[str, Any]) -> Spliced | None:
    """``old_text`` with only its changed regions rewritten to hold ``full``; None when the layout is not one this
    can edit (flow style, a new or removed top-level key, reordered items, ...): use ``merge_text`` then.

    ``old`` is ``old_text`` parsed (``yamlpos.YamlDocument``: data, node tree); ``before`` the data the text holds,
    in the same normalized form as ``full`` (``model_dump(mode="json", exclude_none=True)`` of the registry it
    loaded to); ``minimal`` as for ``merge_text``. A top-level section that changed is merged on its own lines; in a
    block list of mappings with identities (``tenants``), a changed item is merged on its lines, a removed one
    deleted, a new one written in its minimal form after its predecessor. Comment lines between items stay where
    they are (above the item they precede).

    ``Spliced.data`` is the old data with each rewritten region's own parse in its place. It is what the whole new
    text parses to when every region is self-contained: the old document is ``local`` (no aliases, block scalars
    or merge keys), and each new region is too, starts at its section's or list's column and keeps every other
    line deeper. Otherwise it is None and the caller parses the new text."""
    root = old.node
    if not isinstance(root, yaml.MappingNode) or root.flow_style or not isinstance(before, dict):
        return None
    lines = old_text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    keys = [key.value for key, _ in root.value]
    if any(k not in full or k not in before for k in keys) or any(k in minimal for k in full if k not in keys):
        return None
    starts = [key.start_mark.line for key, _ in root.value]
    edits: list[tuple[int, int, str]] = []
    data: dict[str, Any] | None = dict(old.data) if old.local and isinstance(old.data, dict) else None
    for i, (key_node, value_node) in enumerate(root.value):
        key = key_node.value
        if before[key] == full[key]:
            continue
        if key_node.start_mark.column != 0:
            return None
        end = _trim(lines, starts[i], starts[i + 1] if i + 1 < len(starts) else len(lines))
        if _block_items(value_node) and isinstance(before[key], list) and isinstance(full[key], list):
            small = minimal.get(key)
            found = _splice_seq(lines, value_node, end, before[key], full[key],
                                small if isinstance(small, list) and len(small) == len(full[key]) else full[key],
                                old_items=data[key] if data is not None else None)
            if found is None:
                return None
            found_edits, items = found
            if data is not None:
                data = None if items is None else {**data, key: items}
        else:
            text = merge_text("".join(lines[starts[i]:end]), {key: full[key]},
                              {key: minimal[key]} if key in minimal else {})
            if text is None:
                return None
            found_edits = [(starts[i], end, text)]
            if data is not None:
                section = _region_data(text, 0, "")
                data = None if not isinstance(section, dict) or list(section) != [key] else {**data, **section}
        edits += found_edits
    return Spliced(_apply(lines, edits), data)


def _region_data(text: str, column: int, lead: str) -> Any:
    """What ``text`` parses to on its own, if it is self-contained at ``column`` (its first line starts there with
    ``lead``, every other line is deeper, blank, or a comment); ``_NOT_LOCAL`` otherwise."""
    content = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not content or _indent(content[0]) != column or not content[0][column:].startswith(lead):
        return _NOT_LOCAL
    if any(_indent(ln) <= column for ln in content[1:]):
        return _NOT_LOCAL
    source = _WRAP + _shift(text, 2 - column) if lead else text
    try:
        doc = YamlDocument.parse(source, source="<region>", error=ValueError)
    except ValueError:
        return _NOT_LOCAL
    if not doc.local:
        return _NOT_LOCAL
    if lead:
        return doc.data["k"][0] if isinstance(doc.data, dict) and len(doc.data.get("k") or ()) == 1 else _NOT_LOCAL
    return doc.data


_NOT_LOCAL = object()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_items(node: yaml.Node) -> bool:
    return (isinstance(node, yaml.SequenceNode) and not node.flow_style and bool(node.value)
            and all(isinstance(item, yaml.MappingNode) and not item.flow_style for item in node.value))


def _splice_seq(lines: list[str], node: yaml.SequenceNode, end: int, before: list[Any], full: list[Any],
                minimal: list[Any], old_items: list[Any] | None
                ) -> tuple[list[tuple[int, int, str]], list[Any] | None] | None:
    """(the edits, the new list's YAML data or None if not proven locally), or None when this cannot edit it."""
    key = _identity(before) if before else None
    if key is None or not full or len(before) != len(node.value) or _identity(full) != key:
        return None  # an emptied list changes the text's shape (``tenants: []``): the full merge writes it
    starts = [item.start_mark.line for item in node.value]
    columns = {_indent(lines[s]) for s in starts}
    if len(columns) != 1 or any(not lines[s].lstrip(" ").startswith("- ") for s in starts):
        return None
    column = columns.pop()
    ends = [_trim(lines, s, starts[i + 1] if i + 1 < len(starts) else end) for i, s in enumerate(starts)]
    old = {item[key]: i for i, item in enumerate(before)}
    new = {item[key] for item in full}
    kept = [item[key] for item in before if item[key] in new]
    if kept != [item[key] for item in full if item[key] in old]:
        return None  # reordered: the full merge decides (it refuses too)
    edits: list[tuple[int, int, str]] = []
    items: list[Any] | None = [] if old_items is not None and len(old_items) == len(before) else None
    at = starts[0]  # where a new item goes: after the previous item of the new list
    for value, small in zip(full, minimal, strict=True):
        i = old.get(value[key])
        if i is None:
            text = _shift(_dump_item(small if key in small else value), column - 2)
            edits.append((at, at, text))
        elif before[i] != value:
            merged = merge_text(_WRAP + _shift("".join(lines[starts[i]:ends[i]]), 2 - column), {"k": [value]},
                                {"k": [small]})
            if merged is None or not merged.startswith(_WRAP):
                return None
            text = _shift(merged[len(_WRAP):], column - 2)
            edits.append((starts[i], ends[i], text))
        if items is not None:
            item = old_items[i] if i is not None and before[i] == value else _region_data(text, column, "- ")
            if item is _NOT_LOCAL:
                items = None
            else:
                items.append(item)
        if i is not None:
            at = ends[i]
    edits += [(starts[i], ends[i], "") for item, i in old.items() if item not in new]
    return edits, items


def _apply(lines: list[str], edits: list[tuple[int, int, str]]) -> str:
    out: list[str] = []
    cursor = 0
    for start, end, text in sorted(edits, key=lambda e: (e[0], e[1] > e[0])):  # inserts before a replacement
        if start < cursor:
            raise ValueError("overlapping edits")  # cannot happen: regions are disjoint
        out += lines[cursor:start]
        out.append(text)
        cursor = end
    out += lines[cursor:]
    return "".join(out)


def _trim(lines: list[str], start: int, end: int) -> int:
    """``end`` moved up past blank and comment-only lines: they belong to what follows."""
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return end


def _shift(text: str, by: int) -> str:
    """Every line indented by ``by`` more spaces (fewer when negative, never past its first character)."""
    if by == 0:
        return text
    out = []
    for line in text.splitlines(keepends=True):
        if by > 0:
            out.append(" " * by + line if line.strip() else line)
        else:
            out.append(line[min(-by, len(line) - len(line.lstrip(" "))):])
    return "".join(out)


def _dump_item(item: dict[str, Any]) -> str:
    out = io.StringIO()
    _yaml().dump({"k": [item]}, out)
    return out.getvalue()[len(_WRAP):]
