"""A tenant's JSON body, decoded only if vLLM could not be led astray by it: bounded depth, real JSON numbers,
real text. Pure: bytes in, a dict or ``BadBody`` (400 invalid_json) out."""

from __future__ import annotations

import json
from typing import Any

from tenantserve.middleware.errors import BadBody

#: Deepest JSON nesting a tenant body may have (tool schemas need a few levels; 100,000 crashed vLLM's parser).
MAX_JSON_DEPTH = 64


def json_object(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The body as a JSON object; ``BadBody`` (400 invalid_json) for anything else: nesting deeper than
    ``max_depth`` (Python's parser raises RecursionError near 1,000 levels), ``NaN``/``Infinity`` (not JSON, and
    vLLM lets some through, e.g. in ``logit_bias``), and strings with a lone UTF-16 surrogate (``"\\ud800"``: valid
    JSON escapes, but not text; vLLM's tokenizer fails on them with a 500)."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError):
        raise BadBody("request body is not valid JSON") from None
    except RecursionError:
        raise BadBody(f"request body is nested deeper than {max_depth} levels") from None
    if not isinstance(data, dict):
        raise BadBody("request body must be a JSON object")
    if problem := _structure_problem(data, max_depth):
        raise BadBody(problem)
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _structure_problem(data: object, limit: int) -> str | None:
    """Why a decoded body cannot be passed on (too deep, or a string that is not valid Unicode), or None."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit and isinstance(node, dict | list):
            return f"request body is nested deeper than {limit} levels"
        if isinstance(node, str):
            if not _is_text(node):
                return "request body holds a string that is not valid Unicode (a lone surrogate escape)"
        elif isinstance(node, dict):
            stack.extend((k, depth) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
