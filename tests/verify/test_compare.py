import pytest

from tenantserve.verify.compare import (
    FLOAT32_TOLERANCE,
    HALF_TOLERANCE,
    Generation,
    compare,
    default_tolerance,
)


def gen(tokens: list[int], tops: list[dict[int, float]], prompt: list[int] | None = None) -> Generation:
    return Generation(tokens, tops, "", prompt)


A = gen([5, 6, 2], [{5: -0.1, 9: -3.0}, {6: -0.2, 7: -1.9}, {2: -0.01, 8: -6.0}], [1, 4])


def test_identical_generations_pass_with_zero_drift() -> None:
    diff = compare(A, A, tolerance=0.05)
    assert diff.passed and diff.agreed == 3 and diff.diverged_at is None and diff.max_logprob_diff == 0.0


def test_float_noise_passes_and_reports_the_largest_drift() -> None:
    noisy = gen([5, 6, 2], [{5: -0.1 + 1e-6, 9: -3.0}, {6: -0.2 - 3e-6, 7: -1.9}, {2: -0.01, 8: -6.0}], [1, 4])
    diff = compare(A, noisy, tolerance=0.05)
    assert diff.passed and diff.max_logprob_diff == pytest.approx(3e-6)


def test_near_tie_divergence_passes_when_each_token_is_in_the_others_top_k() -> None:
    other = gen([5, 7, 3], [{5: -0.1, 9: -3.0}, {7: -0.19, 6: -0.2}, {3: -0.5}], [1, 4])
    diff = compare(A, other, tolerance=0.05)
    assert diff.passed and diff.diverged_at == 1 and diff.agreed == 1 and "near-tie" in diff.reason


@pytest.mark.parametrize(("dedicated_top", "consolidated_top", "missing"), [
    ({6: -0.2, 7: -1.9}, {7: -0.1, 4: -2.0}, "dedicated's token not in consolidated's top-k"),
    ({6: -0.2, 8: -1.9}, {7: -0.1, 6: -2.0}, "consolidated's token not in dedicated's top-k"),
])
def test_divergence_outside_top_k_fails(dedicated_top: dict[int, float], consolidated_top: dict[int, float],
                                        missing: str) -> None:
    diff = compare(gen([5, 6], [{5: -0.1}, dedicated_top]), gen([5, 7], [{5: -0.1}, consolidated_top]),
                   tolerance=0.05)
    assert not diff.passed and diff.diverged_at == 1 and diff.agreed == 1 and missing in diff.reason


def test_drift_beyond_tolerance_fails_even_when_the_tokens_agree() -> None:
    shifted = gen([5, 6, 2], [{5: -0.4, 9: -3.0}, {6: -0.2, 7: -1.9}, {2: -0.01, 8: -6.0}], [1, 4])
    diff = compare(A, shifted, tolerance=0.05)
    assert not diff.passed and diff.diverged_at is None and diff.max_logprob_diff == pytest.approx(0.3)
    assert "drift" in diff.reason
    assert compare(A, shifted, tolerance=0.5).passed


def test_prompts_tokenized_differently_fail() -> None:
    diff = compare(A, gen(A.token_ids, A.logprobs, [1, 4, 4]), tolerance=1.0)
    assert not diff.passed and "tokenized differently" in diff.reason


def test_tolerance_follows_the_engine_dtype() -> None:
    assert default_tolerance("float32", "bfloat16") == FLOAT32_TOLERANCE
    assert default_tolerance("bfloat16", "float32") == HALF_TOLERANCE
    assert default_tolerance("auto", "float16") == HALF_TOLERANCE
    assert default_tolerance("auto", None) == FLOAT32_TOLERANCE
