"""``tenantserve verify``: a tenant moved onto shared serving gets an eval diff, dedicated vs consolidated.

Dedicated: transformers + peft, the adapter alone, float32, greedy (``dedicated``). Consolidated: the engine, the
adapter's requests in batches mixed with other tenants' adapters and the base (``consolidated``). Compared per prompt
with vLLM's own rule plus a logprob drift bound (``compare``); only float-reordering noise should remain.

- ``run``: one verification end to end (what to compare from the registry, both sides, the report).
- ``dedicated``, ``consolidated``: the two sides; ``compare``: the per-prompt rule.
- ``prompts``: the prompt sets (JSON lines beside the registry); ``lmeval``: the same diff through lm-eval-harness.
"""

from tenantserve.verify.compare import Generation, PromptDiff, compare
from tenantserve.verify.prompts import PromptCase, PromptsError, load_prompts, parse_prompts
from tenantserve.verify.run import VerifyReport, VerifyRequest, verify

__all__ = ["Generation", "PromptCase", "PromptDiff", "PromptsError", "VerifyReport", "VerifyRequest", "compare",
           "load_prompts", "parse_prompts", "verify"]
