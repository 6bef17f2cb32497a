"""Prompt sets for ``tenantserve verify``: JSON lines, one ``{"prompt": ..., "max_tokens": ...}`` object per line.

A registry's default set for a model lives beside the registry file: ``verify/<model name>.jsonl`` (the embedded demo
ships ``configs/verify/{sql,pirate,french,demo-base}.jsonl``). Every problem is reported with the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tenantserve.errors import TenantserveError

#: Tokens generated per prompt when a line does not say (short: both sides run it, the dedicated one on CPU).
DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 4096
MAX_PROMPTS = 10_000
_KEYS = {"prompt", "max_tokens"}


class PromptsError(TenantserveError):
    """The prompt set is missing, unreadable or malformed (exit 2)."""

    code = "prompts_invalid"
    exit_code = 2


@dataclass(frozen=True)
class PromptCase:
    """One line of a prompt set: the prompt text and how many tokens to generate for it."""

    prompt: str
    max_tokens: int = DEFAULT_MAX_TOKENS


def default_prompts_path(registry_source: Path | None, model: str) -> Path | None:
    """``<registry dir>/verify/<model>.jsonl``, or None for a registry that was not loaded from a file."""
    return None if registry_source is None else registry_source.parent / "verify" / f"{model}.jsonl"


def parse_prompts(text: str, *, source: str) -> list[PromptCase]:
    """Validate JSON-lines text (blank lines skipped). Pure. Raises ``PromptsError`` naming ``source:line``."""
    cases: list[PromptCase] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptsError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise PromptsError(f"{where}: each line must be a JSON object like {{\"prompt\": \"...\"}}")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise PromptsError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: prompt, max_tokens)")
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptsError(f"{where}: 'prompt' must be a non-empty string")
        max_tokens = item.get("max_tokens", DEFAULT_MAX_TOKENS)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise PromptsError(f"{where}: 'max_tokens' must be an integer from 1 to {MAX_TOKENS_LIMIT}")
        cases.append(PromptCase(prompt, max_tokens))
        if len(cases) > MAX_PROMPTS:
            raise PromptsError(f"{source}: more than {MAX_PROMPTS} prompts")
    if not cases:
        raise PromptsError(f"{source}: no prompts (one JSON object per line: {{\"prompt\": \"...\"}})")
    return cases


def load_prompts(path: Path) -> list[PromptCase]:
    """Read and validate a prompt file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptsError(f"{path}: prompt file not found") from None
    except IsADirectoryError:
        raise PromptsError(f"{path}: is a directory, not a prompt file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsError(f"{path}: cannot read prompt file: {exc}") from None
    return parse_prompts(text, source=str(path))
