"""tenantserve: many tenants' LoRA fine-tunes served from one copy of a base model by one vLLM engine."""

__version__ = "0.1.0"
