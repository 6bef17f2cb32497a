from pathlib import Path

import pytest

from tenantserve.verify.prompts import (
    DEFAULT_MAX_TOKENS,
    PromptCase,
    PromptsError,
    load_prompts,
    parse_prompts,
)

REPO = Path(__file__).resolve().parents[2]


def test_lines_become_cases_with_default_max_tokens() -> None:
    text = '{"prompt": "List 3 fruits:"}\n\n{"prompt": "Say hello:", "max_tokens": 4}\n'
    assert parse_prompts(text, source="p.jsonl") == [PromptCase("List 3 fruits:", DEFAULT_MAX_TOKENS),
                                                     PromptCase("Say hello:", 4)]


@pytest.mark.parametrize(("text", "expect"), [
    ('{"prompt": "a"}\n{"prompt": ', "p.jsonl:2: not valid JSON"),
    ('["a"]', "p.jsonl:1: each line must be a JSON object"),
    ('{"prompt": "a", "temperature": 1}', "unknown key(s) 'temperature'"),
    ('{"max_tokens": 3}', "'prompt' must be a non-empty string"),
    ('{"prompt": "   "}', "'prompt' must be a non-empty string"),
    ('{"prompt": 7}', "'prompt' must be a non-empty string"),
    ('{"prompt": "a", "max_tokens": 0}', "'max_tokens' must be an integer"),
    ('{"prompt": "a", "max_tokens": 1.5}', "'max_tokens' must be an integer"),
    ('{"prompt": "a", "max_tokens": true}', "'max_tokens' must be an integer"),
    ('{"prompt": "a", "max_tokens": 100000}', "'max_tokens' must be an integer"),
    ("\n  \n", "no prompts"),
])
def test_bad_lines_are_refused_with_file_and_line(text: str, expect: str) -> None:
    with pytest.raises(PromptsError, match=expect.replace("(", r"\(").replace(")", r"\)")) as info:
        parse_prompts(text, source="p.jsonl")
    assert info.value.exit_code == 2 and info.value.code == "prompts_invalid"


def test_unreadable_files_are_prompts_errors(tmp_path: Path) -> None:
    with pytest.raises(PromptsError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(PromptsError, match="is a directory"):
        load_prompts(tmp_path)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PromptsError, match="cannot read"):
        load_prompts(binary)


@pytest.mark.parametrize("name", ["sql", "pirate", "french", "demo-base"])
def test_shipped_prompt_sets_are_valid_and_short(name: str) -> None:
    cases = load_prompts(REPO / "configs" / "verify" / f"{name}.jsonl")
    assert len(cases) >= 4 and all(c.max_tokens <= 16 for c in cases)
