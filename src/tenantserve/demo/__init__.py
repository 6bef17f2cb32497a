"""The demo: one engine, one base, several tenants' adapters in one batch, on the embedded model.

- ``run``: ``tenantserve demo`` end to end (start, send a mixed batch, print, stop).
- ``embedded``: the embedded default's names, prompts and the answers it was trained to give.
"""
