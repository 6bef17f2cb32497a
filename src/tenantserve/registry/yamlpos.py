"""YAML with positions: parse once, remember the line of every key, refuse duplicate keys.

PyYAML silently keeps the last of two equal keys; for a registry that would silently drop a tenant's setting.
The text is parsed once, by libyaml (PyYAML's C parser, ``CSafeLoader``): the node tree gives the lines and the
duplicate check, and the same tree is constructed into plain data. ``node`` is kept so a writer can find where each
section and list item sits in the text (``yamlkeep.splice_text``) without parsing again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

#: libyaml's parser with PyYAML's safe constructor and resolver: the same data as ``yaml.SafeLoader``, ~10x faster.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class YamlDocument:
    data: Any
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    #: The composed node tree (None for an empty document); its marks are 0-based lines and columns of the text.
    node: yaml.Node | None = None

    @classmethod
    def parse(cls, text: str, *, source: str, error: type[Exception]) -> YamlDocument:
        """Parse ``text``; ``error(message)`` for malformed YAML or a duplicate key, naming ``source`` and the line."""
        loader = Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return cls(data=None)
            lines: dict[tuple[Any, ...], int] = {}
            _walk(node, (), lines, source, error)
            data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            problem = getattr(exc, "problem", None) or str(exc)
            raise error(f"{where}: malformed YAML: {problem}") from None
        finally:
            loader.dispose()
        return cls(data=data, lines=lines, node=node)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest known prefix of ``loc`` (1-based)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: dict, source: str, error: type[Exception]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise error(
                    f"{source}:{key_node.start_mark.line + 1}: duplicate key '{key}' "
                    f"(first at line {seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines, source, error)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, source, error)
