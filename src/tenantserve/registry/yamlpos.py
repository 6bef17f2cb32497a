"""YAML with positions: parse once, refuse duplicate keys, find the line of any key path.

PyYAML silently keeps the last of two equal keys; for a registry that would silently drop a tenant's setting.
The text is parsed once, by libyaml (PyYAML's C parser, ``CSafeLoader``), into a node tree; plain mappings, lists
and strings are built from it directly, with the duplicate check on the way (every other scalar, and anything
tagged, goes through PyYAML's safe constructor: the same data as ``yaml.safe_load``). Lines are looked up in the
tree only when an error needs one. ``node`` is kept so a writer can find where each section and list item sits in
the text (``yamlkeep.splice_text``) without parsing again. A large registry parses in a fraction of the time the
pure-Python loader took, which is what keeps one registry write cheap (``registry.update``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

#: libyaml's parser with PyYAML's safe constructor and resolver: the same data as ``yaml.SafeLoader``, ~10x faster.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


class _Fallback(Exception):
    """A shape the direct builder leaves to PyYAML (aliases, merge keys, unhashable keys)."""


@dataclass
class YamlDocument:
    data: Any
    #: The composed node tree (None for an empty document); its marks are 0-based lines and columns of the text.
    node: yaml.Node | None = None
    #: Whether each list item and section can be re-parsed on its own to the same data: no node appears twice
    #: (aliases), no block scalars (``|``, ``>``: they take in the blank lines after them), no merge keys.
    local: bool = False
    _lines: dict[tuple[Any, ...], int] | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str, *, source: str, error: type[Exception]) -> YamlDocument:
        """Parse ``text``; ``error(message)`` for malformed YAML or a duplicate key, naming ``source`` and the line."""
        loader = Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return cls(data=None)
            seen: set[object] = set()
            try:
                data = _build(node, loader, seen, source, error)
                local = "block" not in seen
            except _Fallback:
                _check_duplicates(node, source, error)
                data, local = loader.construct_document(node), False
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            problem = getattr(exc, "problem", None) or str(exc)
            raise error(f"{where}: malformed YAML: {problem}") from None
        finally:
            loader.dispose()
        return cls(data=data, node=node, local=local)

    @property
    def lines(self) -> dict[tuple[Any, ...], int]:
        """Key path -> 1-based line, for every mapping key and list item (computed on first use)."""
        if self._lines is None:
            self._lines = {}
            if self.node is not None:
                _walk(self.node, (), self._lines)
        return self._lines

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest known prefix of ``loc`` (1-based)."""
        lines = self.lines
        for end in range(len(loc), -1, -1):
            if loc[:end] in lines:
                return lines[loc[:end]]
        return None


def _build(node: yaml.Node, loader: Any, seen: set[object], source: str, error: type[Exception]) -> Any:
    """The data of ``node``: plain maps, lists and strings directly, the rest by PyYAML's safe constructor.
    ``seen`` collects every node's id, and ``"block"`` once a block scalar is met."""
    if id(node) in seen:
        raise _Fallback  # an alias: PyYAML shares (or recurses into) the object
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.style in ("|", ">"):
            seen.add("block")
        return node.value if node.tag == _STR else loader.construct_object(node, deep=True)
    if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
        out: dict[Any, Any] = {}
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                raise _Fallback
            _no_duplicate(key_node, first, source, error)
            out[_build(key_node, loader, seen, source, error)] = _build(value_node, loader, seen, source, error)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        return [_build(item, loader, seen, source, error) for item in node.value]
    raise _Fallback  # a tagged collection (!!set, !!omap, ...)


def _no_duplicate(key_node: yaml.Node, first: dict[Any, int], source: str, error: type[Exception]) -> None:
    key, line = key_node.value, key_node.start_mark.line + 1
    if key in first:
        raise error(f"{source}:{line}: duplicate key '{key}' (first at line {first[key]})")
    first[key] = line


def _check_duplicates(node: yaml.Node, source: str, error: type[Exception], seen: set[object] | None = None) -> None:
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            _no_duplicate(key_node, first, source, error)
            _check_duplicates(value_node, source, error, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, source, error, seen)


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: dict) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines.setdefault((*path, key_node.value), key_node.start_mark.line + 1)
            _walk(value_node, (*path, key_node.value), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)
