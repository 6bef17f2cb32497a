import pytest

from tenantserve.errors import EngineError
from tenantserve.verify.consolidated import parse_choice


def test_token_id_logprobs_become_a_generation() -> None:
    choice = {
        "text": " SELECT",
        "prompt_token_ids": [1, 273],
        "logprobs": {"tokens": ["token_id:314", "token_id:2"], "token_logprobs": [-0.004, -0.5],
                     "top_logprobs": [{"token_id:314": -0.004, "token_id:636": -7.7}, {"token_id:14": -0.3}]},
    }
    gen = parse_choice(choice)
    assert gen.token_ids == [314, 2] and gen.prompt_ids == [1, 273] and gen.text == " SELECT"
    assert gen.logprobs[0] == {314: -0.004, 636: -7.7}
    assert gen.logprobs[1] == {14: -0.3, 2: -0.5}  # the chosen token is always present


@pytest.mark.parametrize("choice", [
    {"text": "x", "logprobs": None},
    {"text": "x", "logprobs": {"tokens": ["SELECT"], "token_logprobs": [-0.1], "top_logprobs": [{}]}},
])
def test_answers_without_token_id_logprobs_are_engine_errors(choice: dict) -> None:
    with pytest.raises(EngineError) as info:
        parse_choice(choice)
    assert info.value.exit_code == 3
