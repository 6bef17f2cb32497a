"""Capacity planning: what consolidation costs and saves, and how the slot cache behaves under a traffic shape.

- ``plan``: the plan (engines, slots, memory) from the registry and the lab's arithmetic; pure.
- ``memory``: the memory bill (one shared base, a delta per adapter); ``memprobe``: what a live engine allocates.
- ``simulate``: vLLM 0.32's scheduler and LoRA slot rules, replayed step by step; pure.
- ``trace``: request traces, generated from a traffic shape or read from recorded logs.
- ``replay``: one trace on a real engine and through the simulator, compared.
- ``plot``: hit rate and deferred requests against ``max_loras`` (matplotlib).
"""
