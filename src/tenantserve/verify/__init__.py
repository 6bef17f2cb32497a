"""``tenantserve verify``: a tenant moved onto shared serving gets an eval diff, dedicated vs consolidated.

Dedicated: transformers + peft, the adapter alone, float32, greedy (``dedicated``). Consolidated: the engine, the
adapter's requests in batches mixed with other tenants' adapters and the base (``consolidated``). Compared per prompt
with vLLM's own rule plus a logprob drift bound (``compare``); only float-reordering noise should remain.
"""

from tenantserve.verify.compare import Generation, PromptDiff, compare
from tenantserve.verify.prompts import PromptCase, PromptsError, load_prompts, parse_prompts
from tenantserve.verify.run import VerifyReport, VerifyRequest, verify

__all__ = ["Generation", "PromptCase", "PromptDiff", "PromptsError", "VerifyReport", "VerifyRequest", "compare",
           "load_prompts", "parse_prompts", "verify"]
