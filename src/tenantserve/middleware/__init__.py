"""Tenant isolation inside vLLM's own API server: keys, model ACL, per-tenant /v1/models, admin lockdown, limits.

Loaded by ``vllm serve --middleware tenantserve.middleware.TenantMiddleware`` (the launcher adds it when the
registry's ``security.auth`` is on); reads the registry named by ``TENANTSERVE_REGISTRY`` and re-reads it on change
(``registry.watch``). It runs in the API server's process; the engine's own processes are ``vllm_plugin/``'s.

- ``asgi``: ``TenantMiddleware``, the ASGI layer: classify, authenticate, check, count, hand the request to vLLM.
- ``policy``: who may do what, pure decisions over an immutable view of the registry (routes, keys, ACL, limits).
- ``body``: a tenant's JSON body decoded only when vLLM cannot be led astray by it (depth, numbers, text).
- ``adapter_guard``: the only adapter a request runs is its ``model`` (vLLM's default multimodal LoRA turned off).
- ``errors``: why a request is refused, each reason with its status and error type.
- ``metrics``: per-tenant request metrics, with bounded labels.
"""

from tenantserve.middleware.asgi import TenantMiddleware

#: The dotted path the launcher passes to ``--middleware``.
MIDDLEWARE_PATH = "tenantserve.middleware.TenantMiddleware"

__all__ = ["MIDDLEWARE_PATH", "TenantMiddleware"]
