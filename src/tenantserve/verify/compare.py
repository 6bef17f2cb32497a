"""Dedicated vs consolidated, one prompt at a time: vLLM's own rule for "same model, different kernels".

The rule is vLLM's ``check_logprobs_close`` (tests/models/utils.py): the greedy tokens must be equal up to the first
position where they differ, and there each side's token must be in the other side's top-k logprobs (a near-tie that
float reordering may flip); after that the sequences are not compared. On top of it, the largest |logprob difference|
of a token both sides chose (before any divergence) must stay within a tolerance: float reordering moves logprobs by
~1e-5 in float32, a wrong rank, scaling or base by far more, even when the argmax survives. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

#: |logprob| drift allowed on agreeing tokens (nats) when the engine computes in float32 / in 16-bit floats.
FLOAT32_TOLERANCE = 0.01
HALF_TOLERANCE = 0.5


@dataclass(frozen=True)
class Generation:
    """One greedy generation: the tokens chosen and, per position, the top-k logprobs (token id -> logprob; always
    holding the chosen token). ``prompt_ids`` is how the prompt was tokenized, when the side reports it."""

    token_ids: list[int]
    logprobs: list[dict[int, float]]
    text: str
    prompt_ids: list[int] | None = None


@dataclass(frozen=True)
class PromptDiff:
    """The verdict for one prompt. ``agreed``: tokens equal before the first divergence (or in total);
    ``diverged_at``: that token's index (None: none); ``max_logprob_diff``: the largest |logprob difference| in nats
    on agreeing tokens (None: none compared); ``reason``: why it failed or passed narrowly, else empty."""

    passed: bool
    agreed: int
    diverged_at: int | None
    max_logprob_diff: float | None
    reason: str


def default_tolerance(engine_dtype: str, base_dtype: str | None) -> float:
    """The drift allowed (nats) for an engine running ``engine_dtype`` ('auto' = the base's ``torch_dtype``)."""
    dtype = base_dtype if engine_dtype == "auto" else engine_dtype
    return HALF_TOLERANCE if dtype in ("float16", "bfloat16", "half") else FLOAT32_TOLERANCE


def compare(dedicated: Generation, consolidated: Generation, *, tolerance: float) -> PromptDiff:
    """Apply the rule to one prompt's two generations (names in reasons: 'dedicated', 'consolidated'); ``tolerance``
    in nats. Pure; raises nothing for well-formed generations (``logprobs`` as long as ``token_ids``)."""
    if dedicated.prompt_ids is not None and consolidated.prompt_ids is not None \
            and dedicated.prompt_ids != consolidated.prompt_ids:
        return PromptDiff(False, 0, 0, None, "the prompt was tokenized differently (another tokenizer?)")
    worst: float | None = None
    for i, (a, b) in enumerate(zip(dedicated.token_ids, consolidated.token_ids)):
        top_d, top_c = dedicated.logprobs[i], consolidated.logprobs[i]
        if a == b:
            if a in top_d and a in top_c:
                diff = abs(top_d[a] - top_c[a])
                worst = diff if worst is None else max(worst, diff)
            continue
        if a in top_c and b in top_d:
            return _with_drift(PromptDiff(True, i, i, worst, f"near-tie at token {i}: both tokens in each other's "
                                                              f"top-{len(top_c)} (float reordering)"), tolerance)
        missing = "dedicated's token not in consolidated's top-k" if a not in top_c else \
            "consolidated's token not in dedicated's top-k"
        return PromptDiff(False, i, i, worst, f"diverged at token {i}: {missing}")
    return _with_drift(PromptDiff(True, min(len(dedicated.token_ids), len(consolidated.token_ids)), None, worst, ""),
                       tolerance)


def _with_drift(diff: PromptDiff, tolerance: float) -> PromptDiff:
    if diff.max_logprob_diff is None or diff.max_logprob_diff <= tolerance:
        return diff
    return PromptDiff(False, diff.agreed, diff.diverged_at, diff.max_logprob_diff,
                      f"logprobs drift by {diff.max_logprob_diff:.3g} > tolerance {tolerance:g} on agreeing tokens")
