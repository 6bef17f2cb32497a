"""The tenant registry (``configs/adapters.yaml``): what one engine serves, to whom, with which limits.

- ``schema``: the pydantic models (base, engine knobs, tenants, adapters, API keys, security), loading with line
  numbers in every error, saving atomically under the registry lock.
- ``yamlpos``: YAML parsed once with the line of every key; duplicate keys refused.
- ``yamlkeep``: rewriting the operator's YAML with new data, comments, key order and quoting kept.
- ``update``: the one way to change the file (lock, load, change, re-validate, atomic write, one write error), used
  by the sidecar, ``tenantserve keys`` and ``fingerprint --pin``.
- ``knobs``: the engine knobs a registry sets (``engine:`` and ``engine.extra_args``, read as vLLM reads them), the
  ranks vLLM accepts, the derived ``max_lora_rank``: one resolution for the launcher, ``check`` and the sidecar.
- ``keys``: tenant API keys: issue, list, revoke, authenticate (pure, over the models).
- ``watch``: the registry file followed as it changes (one ``FileState``: mtime in ns, size, inode; the last good
  registry kept), for the middleware, the vLLM plugin and the sidecar alike.
- ``metric_labels``: Prometheus label values bounded by the registry (anything it does not name is ``other``).

Everything else reads and writes the registry through these modules; nothing here starts an engine or reads
adapter weights.
"""
