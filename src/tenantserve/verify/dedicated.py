"""The dedicated side: the base (transformers) with the adapter alone (peft), float32, greedy, in this process.

This is the reference a tenant had before moving onto shared serving: no batching, no other adapters, no vLLM
kernels. Each step takes the argmax of the raw logits and records the top-k of their log-softmax, like vLLM's
default ``raw_logprobs``; generation stops at an end-of-sequence token (included, as vLLM reports it) or
``max_tokens``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tenantserve.errors import AdapterError, TenantserveError
from tenantserve.verify.compare import Generation
from tenantserve.verify.prompts import PromptCase


class DedicatedBaseError(TenantserveError):
    """The dedicated base cannot be loaded with transformers (exit 2)."""

    code = "dedicated_base_invalid"
    exit_code = 2


class DedicatedModel:
    """Base + optional adapter, loaded by ``load``; cheap to construct."""

    def __init__(self, base_dir: Path, adapter_dir: Path | None = None) -> None:
        self.base_dir = base_dir
        self.adapter_dir = adapter_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos: set[int] = set()

    def check(self) -> None:
        """The cheap part of ``load``: both directories look like what they should be."""
        if not (self.base_dir / "config.json").is_file():
            raise DedicatedBaseError(f"{self.base_dir}: not a model directory (no config.json)")
        if self.adapter_dir is not None and not (self.adapter_dir / "adapter_config.json").is_file():
            raise AdapterError(f"{self.adapter_dir}: not a PEFT adapter (no adapter_config.json)",
                               code="config_missing")

    def load(self) -> DedicatedModel:
        """Read the weights (float32, eval mode). Raises ``DedicatedBaseError`` or ``AdapterError``."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.check()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.base_dir)
            model = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32)
        except Exception as exc:  # transformers raises many kinds for a broken directory
            raise DedicatedBaseError(f"{self.base_dir}: transformers cannot load it: {exc}") from None
        if self.adapter_dir is not None:
            try:
                from peft import PeftModel
            except ImportError:
                raise DedicatedBaseError("the dedicated side needs peft: pip install 'tenantserve[verify]'",
                                         code="peft_missing") from None
            try:
                model = PeftModel.from_pretrained(model, self.adapter_dir)
            except Exception as exc:
                raise AdapterError(f"{self.adapter_dir}: peft cannot apply the adapter to {self.base_dir}: {exc}",
                                   code="adapter_unloadable") from None
        self._model = model.eval()
        eos = model.generation_config.eos_token_id if model.generation_config else None
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._eos.add(self._tokenizer.eos_token_id)
        return self

    def tokenize(self, prompt: str) -> list[int]:
        """The prompt's token ids, as the base's tokenizer gives them (special tokens included)."""
        return list(self._tokenizer(prompt).input_ids)

    def generate(self, case: PromptCase, *, top_k: int) -> Generation:
        """Greedy decoding of one prompt, ``top_k`` logprobs per generated token."""
        import torch

        prompt_ids = self.tokenize(case.prompt)
        tokens: list[int] = []
        logprobs: list[dict[int, float]] = []
        step_input = torch.tensor([prompt_ids])
        past = None
        with torch.inference_mode():
            for _ in range(case.max_tokens):
                out = self._model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                lp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                chosen = int(torch.argmax(lp))
                values, ids = lp.topk(top_k)
                top = {int(i): float(v) for i, v in zip(ids, values)}
                top[chosen] = float(lp[chosen])
                tokens.append(chosen)
                logprobs.append(top)
                if chosen in self._eos:
                    break
                step_input = torch.tensor([[chosen]])
        text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        return Generation(tokens, logprobs, text, prompt_ids)
