"""The slot cache under a traffic shape: which shapes are comfortable and which melt it. Pure; no engine.

A step-level model of vLLM 0.32's scheduler and LRU adapter manager, calibrated against a real engine
(``tenantserve simulate --against-engine``; README, "The simulator, checked against vLLM"). Every assumption is
one of vLLM's rules:

1. **Steps.** Time is counted in scheduler steps. A request of P prompt and T output tokens is prefilled in the step
   that admits it (chunked when the step's token budget is short), which also samples its first token; it then
   decodes one token per step and leaves the batch after the step that samples token T (``ignore_eos`` traffic).
2. **Running first.** Each step schedules the running requests first (one decode token each, or their next prefill
   chunk) in admission order while the token budget (``max_num_batched_tokens``) lasts; their adapters open the step's
   adapter set.
3. **Waiting in order.** Waiting requests are then taken in arrival order (FCFS, or priority = arrival index) while
   fewer than ``max_num_seqs`` run and budget is left. A request whose adapter is not in the step's set when the set
   already holds ``max_loras`` adapters is *deferred*: skipped this step, keeping its place in the queue. The plugin's
   counters: ``defers`` +1 per adapter per step in which one of its requests was skipped; ``deferred requests`` +1 the
   first time a request is.
4. **Activation.** The worker activates the step's adapters one by one in the iteration order of a Python ``set`` of
   them (hash order), re-ordered by the plugin's slot-order fix (``vllm_plugin/slot_order.py``): adapters already in a
   slot first, then those in the host cache, then the ones read from disk. In a slot: a *hit*, touched (LRU). Not: a
   *miss*; when the slots are full the least recently used slot is *evicted*; the adapter comes from the host cache
   (LRU of ``max_cpu_loras``) or from disk. ``order`` gives the set's iteration order: pass vLLM's hashes to replay
   an engine exactly (``planning.replay``); the default is a fixed CRC-32 order, so a run is reproducible.
5. **Finishing.** A request that finished in step s frees its batch place for step s + 1.
"""

from __future__ import annotations

import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

#: The iteration order of a set of adapter names that were added to the batch in the given order.
SetOrder = Callable[[Sequence[str]], list[str]]

#: Verdict thresholds (fractions of requests deferred, slot hit rate); README, "Planning: memory and traffic".
COMFORTABLE_DEFERRED, COMFORTABLE_HIT_RATE, MELTING_DEFERRED = 0.01, 0.95, 0.25


@dataclass(frozen=True)
class Request:
    """One request: the step it arrives in, its adapter (``None``: the base), its prompt and output lengths (tokens)."""

    arrival: int
    adapter: str | None
    prompt_tokens: int = 16
    output_tokens: int = 16


@dataclass(frozen=True)
class Engine:
    """The engine knobs the model depends on (vLLM's flags of the same names)."""

    max_loras: int = 8
    max_cpu_loras: int = 40
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048

    def __post_init__(self) -> None:
        """vLLM's own limits: every knob >= 1 and ``max_cpu_loras >= max_loras`` (raises ``ValueError``)."""
        for name in ("max_loras", "max_cpu_loras", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras {self.max_cpu_loras} < max_loras {self.max_loras} "
                             "(vLLM keeps every adapter in a slot in host memory too)")


@dataclass
class SlotState:
    """The worker's slots and host cache, least recently used first. Carried between runs when replaying waves."""

    slots: OrderedDict[str, None] = field(default_factory=OrderedDict)
    host: OrderedDict[str, None] = field(default_factory=OrderedDict)

    @classmethod
    def holding(cls, slots: Iterable[str] = (), host: Iterable[str] = ()) -> SlotState:
        """Adapters already in the slots and in the host cache, each least recently used first."""
        return cls(OrderedDict.fromkeys(slots), OrderedDict.fromkeys(host))


@dataclass
class Result:
    """What happened, in the plugin's terms (``tenantserve_lora_*``); waits are in scheduler steps."""

    steps: int = 0
    requests: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    misses: Counter[str] = field(default_factory=Counter)
    evicted: Counter[str] = field(default_factory=Counter)
    disk_loads: int = 0
    cpu_cache_hits: int = 0
    defers: Counter[str] = field(default_factory=Counter)
    deferred_requests: set[int] = field(default_factory=set)
    waits: list[int] = field(default_factory=list)

    @property
    def evictions(self) -> int:
        """Adapters pushed out of a slot, all adapters together."""
        return sum(self.evicted.values())

    @property
    def hit_rate(self) -> float:
        """Hits / (hits + misses) over adapter-steps, a fraction in [0, 1]; 1.0 when no adapter ran."""
        total = sum(self.hits.values()) + sum(self.misses.values())
        return sum(self.hits.values()) / total if total else 1.0

    def wait_quantile(self, q: float) -> float:
        """Steps between arrival and admission, at quantile ``q`` of the admitted requests."""
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    @property
    def deferred_fraction(self) -> float:
        """Requests deferred at least once / requests, a fraction in [0, 1]."""
        return len(self.deferred_requests) / self.requests if self.requests else 0.0

    @property
    def verdict(self) -> str:
        """``comfortable``, ``strained`` or ``melting`` (``judge``)."""
        return self.judge()[0]

    def judge(self) -> tuple[str, str]:
        """(verdict, reason). comfortable: <= 1% of requests ever wait for a slot and >= 95% of adapter-steps hit;
        melting: >= 25% of requests wait for a slot; strained in between."""
        deferred, rate = self.deferred_fraction, self.hit_rate
        facts = f"{deferred:.0%} of requests deferred, hit rate {rate:.0%}"
        if deferred <= COMFORTABLE_DEFERRED and rate >= COMFORTABLE_HIT_RATE:
            return "comfortable", f"{facts} (<= 1% and >= 95%)"
        if deferred >= MELTING_DEFERRED:
            return "melting", f"{facts} (>= 25% deferred)"
        why = "> 1% deferred" if deferred > COMFORTABLE_DEFERRED else "< 95% hits"
        return "strained", f"{facts} ({why})"


def crc_order(names: Sequence[str]) -> list[str]:
    """A fixed stand-in for vLLM's per-process hash order (reproducible across runs)."""
    return sorted(names, key=lambda n: zlib.crc32(n.encode()))


@dataclass
class _Live:
    rid: int
    request: Request
    entered: int
    computed: int = 0
    produced: int = 0


def simulate_requests(requests: Sequence[Request], engine: Engine, *, waves: bool = False,
                      state: SlotState | None = None, order: SetOrder = crc_order,
                      slot_order: bool = True) -> Result:
    """Replay requests step by step. ``waves``: requests with equal ``arrival`` form a wave that enters the queue
    at once when the engine is idle, and runs to completion before the next (how ``--against-engine`` replays a
    trace on a paused engine); else each arrives in its step. ``state`` is updated in place.
    ``slot_order=False`` models vLLM without the plugin's fix."""
    state = state if state is not None else SlotState()
    pending = sorted(enumerate(requests), key=lambda p: (p[1].arrival, p[0]))
    result = Result(requests=len(requests))
    waiting: list[_Live] = []
    running: list[_Live] = []
    batch: dict[str, int] = {}  # adapter -> running requests, in the order adapters entered the batch
    step, cursor = 0, 0
    while cursor < len(pending) or waiting or running:
        if waves and not waiting and not running:
            wave = pending[cursor][1].arrival
            while cursor < len(pending) and pending[cursor][1].arrival == wave:
                waiting.append(_Live(pending[cursor][0], pending[cursor][1], step))
                cursor += 1
        elif not waves:
            if not waiting and not running:
                step = max(step, pending[cursor][1].arrival)
            while cursor < len(pending) and pending[cursor][1].arrival <= step:
                waiting.append(_Live(pending[cursor][0], pending[cursor][1], step))
                cursor += 1
        scheduled = _schedule(step, waiting, running, batch, engine, result)
        _activate(order(list(batch)), state, engine, result, slot_order)
        for live, tokens in scheduled:
            live.computed += tokens
            if live.computed >= live.request.prompt_tokens:
                live.produced += 1
            adapter = live.request.adapter
            if live.produced >= live.request.output_tokens:
                running.remove(live)
                if adapter is not None:
                    batch[adapter] -= 1
                    if not batch[adapter]:
                        del batch[adapter]
        step += 1
    result.steps = step
    return result


def _schedule(step: int, waiting: list[_Live], running: list[_Live], batch: dict[str, int], engine: Engine,
              result: Result) -> list[tuple[_Live, int]]:
    """One ``Scheduler.schedule``: running requests first, then the waiting queue in order (rules 2 and 3)."""
    budget = engine.max_num_batched_tokens
    scheduled: list[tuple[_Live, int]] = []
    loras: set[str] = set()
    for live in running:
        if budget <= 0:
            break
        need = max(1, live.request.prompt_tokens - live.computed)
        tokens = min(need, budget)
        budget -= tokens
        scheduled.append((live, tokens))
        if live.request.adapter is not None:
            loras.add(live.request.adapter)
    skipped: list[_Live] = []
    deferred_now: set[str] = set()
    while waiting and budget > 0 and len(running) < engine.max_num_seqs:
        live = waiting.pop(0)
        adapter = live.request.adapter
        if adapter is not None and adapter not in loras and len(loras) >= engine.max_loras:
            skipped.append(live)
            deferred_now.add(adapter)
            result.deferred_requests.add(live.rid)
            continue
        tokens = min(live.request.prompt_tokens, budget)
        budget -= tokens
        running.append(live)
        scheduled.append((live, tokens))
        result.waits.append(step - live.entered)
        if adapter is not None:
            loras.add(adapter)
            batch[adapter] = batch.get(adapter, 0) + 1
    waiting[:0] = skipped
    for adapter in deferred_now:
        result.defers[adapter] += 1
    return scheduled


def _activate(needed: list[str], state: SlotState, engine: Engine, result: Result, slot_order: bool) -> None:
    """The worker's ``_apply_adapters`` over the step's adapters in set order (rule 4)."""
    if slot_order:
        needed = sorted(needed, key=lambda a: 0 if a in state.slots else 1 if a in state.host else 2)
    for adapter in needed:
        if adapter in state.slots:
            result.hits[adapter] += 1
            state.slots.move_to_end(adapter)
            state.host.move_to_end(adapter)
            continue
        result.misses[adapter] += 1
        if adapter in state.host:
            result.cpu_cache_hits += 1
            state.host.move_to_end(adapter)
        else:
            result.disk_loads += 1
            if len(state.host) >= engine.max_cpu_loras:
                dropped, _ = state.host.popitem(last=False)
                state.slots.pop(dropped, None)  # vLLM's remove_adapter also frees its slot
            state.host[adapter] = None
        if len(state.slots) >= engine.max_loras:
            victim, _ = state.slots.popitem(last=False)
            result.evicted[victim] += 1
        state.slots[adapter] = None
