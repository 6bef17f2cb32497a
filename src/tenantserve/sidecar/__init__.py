"""The sidecar: the operators' admin API next to one vLLM engine, and the reconciler that keeps the engine converged
to the tenant registry (desired state) as reported by ``/v1/models`` (actual state). ``tenantserve sidecar`` and
``tenantserve up`` run it; the engine itself is started by ``engine/``.

- ``app``: the FastAPI app; its lifespan builds the components below and hangs them on ``app.state``.
- ``routes``, ``protocol``: the admin routes (a few lines each) and their request/response bodies.
- ``service``: ``AdminService``, the onboarding and offboarding of tenants and adapters on the running engine.
- ``reconciler``: ``Reconciler``, the pure ``diff`` of registry against engine and the loop that applies it.
- ``store``: ``RegistryStore``, the registry file as the sidecar's durable state (read, change, validate, write).
- ``tenant_keys``: tenant API keys through the admin API (over ``registry.keys`` and the store).
- ``engine_client``: ``EngineClient``, vLLM's HTTP API as the sidecar uses it (health, list, load, unload).
- ``state``: ``StatusBoard``, each adapter's state in memory (``GET /admin/adapters``, the ``tenantserve_adapters``
  gauge).
- ``content``, ``ownership``: what a registered adapter is served from (its admitted store copy) and which folders
  a tenant may onboard from (only its own).
- ``basepin``: the served base, read once at start, for every admission.
- ``gate``, ``http``, ``exposure``, ``errors``: the HTTP edges (admin token and body cap before a route runs, the one
  error body, who may read /docs and /metrics, the typed errors and their statuses).
- ``metrics``: the sidecar's Prometheus metrics on an injected registry.
- ``config``, ``server``, ``together``: what one sidecar runs with, running it on uvicorn, and ``tenantserve up``
  (engine and sidecar started and stopped together).
"""
