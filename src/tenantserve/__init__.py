"""tenantserve: many tenants' LoRA fine-tunes served from one copy of a base model by one vLLM engine.

Which folder owns what (README, "Architecture", has the picture):

- ``registry/``: the tenant registry file (models, load and save, YAML kept as written, keys, change watching).
- ``admission/``: may this adapter be served on this engine (folder, weights, served base, fingerprints, store).
- ``engine/``: from a registry to a running ``vllm serve`` process (the pure launch plan, the process).
- ``middleware/``: tenant isolation inside vLLM's API server (keys, model ACL, limits, request metrics).
- ``vllm_plugin/``: inside vLLM's engine processes (LoRA slot and defer metrics, two fixes to vLLM's LoRA path).
- ``sidecar/``: the operators' admin API and the reconciler that keeps the engine converged to the registry.
- ``planning/``: the memory bill and the slot-cache simulator; ``verify/``: dedicated vs consolidated eval diff.
- ``demo/``: the lab on the embedded model; ``cli/``: the ``tenantserve`` command, thin over all of the above.
- ``errors``, ``api_errors``, ``bearer``, ``settings``: typed errors and their reason codes, the one HTTP error body,
  the bearer header, the settings model (``TENANTSERVE_*``).
"""

__version__ = "0.1.0"
