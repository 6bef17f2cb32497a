"""The sidecar: operators' admin API next to one vLLM engine, and the reconciler that keeps the engine converged
to the tenant registry (desired state) as reported by ``/v1/models`` (actual state)."""
