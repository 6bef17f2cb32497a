"""Tenant isolation inside vLLM's own API server: keys, model ACL, per-tenant /v1/models, admin lockdown, limits.

Loaded by ``vllm serve --middleware tenantserve.middleware.TenantMiddleware`` (the launcher adds it when the
registry's ``security.auth`` is on); reads the registry named by ``TENANTSERVE_REGISTRY`` and re-reads it on change.
"""

from tenantserve.middleware.asgi import TenantMiddleware

#: The dotted path the launcher passes to ``--middleware``.
MIDDLEWARE_PATH = "tenantserve.middleware.TenantMiddleware"

__all__ = ["MIDDLEWARE_PATH", "TenantMiddleware"]
