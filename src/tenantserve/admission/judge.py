"""Every adapter of a registry judged against one engine: the set the launcher serves, ``check`` shows and the
sidecar sizes its rank checks by.

``admit_adapters`` is the one judgement (the launcher's): one refusal never affects another's verdict, and a
derived ``max_lora_rank`` comes from the admitted adapters only. ``slot_rank`` is the engine's slot rank by that
same rule, for a process that did not launch the engine (the sidecar).
"""

from __future__ import annotations

from dataclasses import dataclass

from tenantserve.admission.adapter_dir import AdapterConfig
from tenantserve.admission.admit import Admission, BaseFacts
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.store import AdapterStore, AdapterStoreError, admit_stored
from tenantserve.errors import EngineError, RegistryError, TenantserveError
from tenantserve.registry.knobs import ALLOWED_LORA_RANKS, ResolvedKnobs, derive_max_lora_rank, resolve_knobs
from tenantserve.registry.schema import AdapterSpec, Registry, TenantSpec


#: One admitted adapter: its tenant, its spec (pointing at the store copy) and what admission learned.
Judged = tuple[TenantSpec, AdapterSpec, Admission]


@dataclass(frozen=True)
class Refusal:
    """One adapter left out of the engine, and why (``code``: the admission reason)."""

    tenant: str
    adapter: str
    code: str
    message: str

    def line(self) -> str:
        return f"refused adapter '{self.adapter}' (tenant {self.tenant}) [{self.code}]: {self.message}"


@dataclass(frozen=True)
class AdmittedSet:
    """Every adapter of a registry judged against one engine: the admitted ones (file order), the refused ones,
    and the knobs the engine runs with (``max_lora_rank`` derived from the admitted adapters only)."""

    admitted: tuple[Judged, ...]
    refused: tuple[Refusal, ...]
    knobs: ResolvedKnobs


def admit_adapters(registry: Registry, base: BaseFacts, *, cache: FingerprintCache | None = None,
                   store: AdapterStore | None = None) -> AdmittedSet:
    """Judge every adapter against the engine as configured; one refusal never affects another's verdict.

    Each adapter is first copied into the adapter ``store`` (default: ``AdapterStore.default``) and the copy is
    admitted (``admission.store.admit_stored``): the admitted specs carry the copy's path, which is what is served.

    With an explicit ``max_lora_rank`` each adapter is admitted once against it. When it is derived, the adapters
    are admitted against the largest rank vLLM accepts, the rank is derived from the admitted ones only (a refused
    adapter must not widen every slot), and they are admitted again against it (the weights' real ranks). Every
    admission sees the engine as configured (``ResolvedKnobs.lora_config``: ``--lora-target-modules``,
    ``--lora-dtype``, ... from ``engine.extra_args`` included).
    Raises only ``RegistryError`` (the engine section is invalid, or vLLM refuses its LoRA settings),
    ``EngineError`` (vLLM, whose own validation admission runs, cannot be imported) and ``AdapterStoreError`` (the
    store cannot be written).
    """
    knobs = resolve_knobs(registry, {})  # validates engine: + extra_args before any adapter is read
    explicit = None if knobs.rank_derived else knobs.max_lora_rank
    refused: list[Refusal] = []
    copies = store if store is not None else AdapterStore.default(cache=cache)

    def judge(pairs: list[tuple[TenantSpec, AdapterSpec]], rank: int) -> list[Judged]:
        passed, engine = [], knobs.lora_config(rank)
        for tenant, spec in pairs:
            try:
                stored, admission = admit_stored(registry, spec, copies, base=base, cache=cache, lora_config=engine)
                passed.append((tenant, spec.model_copy(update={"path": stored.path}), admission))
            except (RegistryError, EngineError, AdapterStoreError):
                raise  # the engine's settings refused, vLLM missing, or an unwritable store: no adapter's fault
            except TenantserveError as exc:
                refused.append(Refusal(tenant.id, spec.name, exc.code, str(exc)))
            except OSError as exc:  # a file that cannot be read is this adapter's fault, not the launch's
                refused.append(Refusal(tenant.id, spec.name, "adapter_unreadable",
                                       f"adapter '{spec.name}': {exc.strerror or exc}: {exc.filename or ''}"))
        return passed

    admitted = judge(registry.adapters(), explicit or ALLOWED_LORA_RANKS[-1])
    if explicit is None:
        rank = derive_max_lora_rank([a.rank for _, _, a in admitted])
        if rank < ALLOWED_LORA_RANKS[-1]:
            admitted = judge([(t, s) for t, s, _ in admitted], rank)
    knobs = resolve_knobs(registry, {a.name: a.rank for _, _, a in admitted})
    order = {a.name: i for i, (_, a) in enumerate(registry.adapters())}
    refused.sort(key=lambda r: order[r.adapter])
    return AdmittedSet(tuple(admitted), tuple(refused), knobs)


def slot_rank(registry: Registry, base: BaseFacts | None, *, cache: FingerprintCache | None = None,
              store: AdapterStore | None = None) -> int:
    """The ``max_lora_rank`` the launcher gives the engine for this registry: configured (``engine:`` or
    ``engine.extra_args``), else derived from the adapters ``admit_adapters`` admits against ``base``. Without a
    usable ``base`` nothing can be admitted (the launcher would not start): ``unjudged_rank``.

    Reads every adapter (a store copy each, vLLM's validation): call from a thread. Raises like ``admit_adapters``.
    """
    knobs = resolve_knobs(registry, {})
    if not knobs.rank_derived:
        return knobs.max_lora_rank
    if base is None:
        return unjudged_rank(registry)
    return admit_adapters(registry, base, cache=cache, store=store).knobs.max_lora_rank


def unjudged_rank(registry: Registry) -> int:
    """The slot rank when no adapter can be judged (no usable base): the configured one, else one derived from
    every readable adapter config (capped at the largest rank vLLM accepts). Raises ``RegistryError`` (the engine
    section)."""
    knobs = resolve_knobs(registry, {})
    if not knobs.rank_derived:
        return knobs.max_lora_rank
    ranks = [r for _, spec in registry.adapters() if (r := config_rank(registry, spec)) is not None]
    try:
        return derive_max_lora_rank(ranks)
    except TenantserveError:
        return ALLOWED_LORA_RANKS[-1]


def config_rank(registry: Registry, spec: AdapterSpec) -> int | None:
    """The adapter's largest rank as its config declares it (``rank_pattern`` included); None when unreadable."""
    try:
        return AdapterConfig.read(registry.adapter_path(spec)).max_rank
    except (TenantserveError, OSError):
        return None
