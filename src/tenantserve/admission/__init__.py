"""Admission: may this adapter be served on this engine, and is what is served what was admitted?

- ``admit``: the verdict for one adapter (PEFT config, vLLM's own validator, tensors against the served base and the
  engine's slots), used by the launcher, ``tenantserve check`` and the sidecar alike.
- ``adapter_dir``: what an adapter folder says about itself (config, declared base stamp, tensors, bytes).
- ``weights``: safetensors headers without loading weights, and the one bounded read of every untrusted file.
- ``weight_values``: numbers that would poison every tenant's answers (NaN, inf, extreme scalings), refused.
- ``served_base``: the served base model (fingerprint, config, tensor shapes) and the pinned fingerprint.
- ``fingerprint``, ``fingerprint_cache``: content fingerprints of model and adapter folders, cached by stat.
- ``store``: server-owned, read-only copies of admitted adapters, named by their content (what vLLM loads).
- ``judge``: every adapter of a registry judged against one engine (the set the launcher serves, ``check`` shows
  and the sidecar sizes its slot rank by: a derived ``max_lora_rank`` comes from the admitted adapters only).
- ``report``: every admission check over a whole registry, one row per adapter (``tenantserve check``).
"""
