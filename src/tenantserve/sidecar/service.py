"""The admin operations: onboard and offboard tenants and adapters on a running engine, persisted in the registry.

Onboarding: the path-ownership rule (``ownership``: only from ``<adapters root>/<tenant>``, nothing resolving outside
it, nothing overlapping another tenant's adapter), admission checks on a store copy, then persist (so the engine's
counters know the name from its first load), load through vLLM, confirm it is listed and answers a one-token warm-up;
any failure after that unloads it and removes the entry again, so a refused request changes nothing. Offboarding: persist the removal
first (so a crash cannot resurrect it), unload (vLLM forgets the name: new requests get 404 at once; requests in flight
keep their adapter and finish), then wait, bounded, until vLLM reports none of its requests running or waiting.
Every operation holds the adapter's (or tenant's) lock, so concurrent calls serialize and repeats are idempotent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tenantserve.admission.admit import BaseFacts, EngineLora, admit
from tenantserve.errors import AdapterError, EngineError, TenantserveError
from tenantserve.registry.keys import find_tenant
from tenantserve.registry.schema import AdapterSpec, Registry, TenantSpec
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.content import ServedContent
from tenantserve.sidecar.engine_client import EngineClient
from tenantserve.sidecar.errors import Conflict, NotFound, NotServable
from tenantserve.sidecar.metrics import SidecarMetrics
from tenantserve.sidecar.ownership import Layout, check, inspect, requested_dir, tenant_folder
from tenantserve.sidecar.protocol import AdapterCreate, OffboardView, TenantCreate
from tenantserve.sidecar.state import AdapterState, AdapterStatus, StatusBoard
from tenantserve.sidecar.store import RegistryStore


class AdminService:
    """The admin operations on one running engine: onboard and offboard tenants and adapters. The routes call it;
    the reconciler borrows ``admit`` for its own (re)loads.

    Holds no state of its own: it changes the registry through ``RegistryStore`` (one operation per adapter or tenant
    at a time, under the store's lock for that name), the engine through ``EngineClient``, adapter states on the
    ``StatusBoard`` and store copies through ``ServedContent``, and counts each operation
    (``tenantserve_sidecar_operations_total{operation,result}``). ``base``: the served base's facts, read at start;
    ``max_lora_rank`` / ``lora_config``: the engine's slots, what admission judges against.

    Raises, for the HTTP edge to translate once: ``TenantNotFound`` / ``NotFound`` (404), ``Conflict`` and
    ``PathOwned`` (409), ``AdapterError`` (400 with the ownership or admission reason), ``NotServable`` (502: loaded
    but not listed, or the warm-up failed), ``EngineError`` (502), ``RegistryWriteError`` (503). A refused
    onboarding leaves the registry and the engine as they were.
    """

    def __init__(self, store: RegistryStore, engine: EngineClient, board: StatusBoard, metrics: SidecarMetrics,
                 config: SidecarConfig, *, max_lora_rank: int | None, base: BaseFacts | None = None,
                 content: ServedContent | None = None, lora_config: EngineLora | None = None) -> None:
        self.store, self.engine, self.board, self.metrics, self.config = store, engine, board, metrics, config
        self.content = content  # None: serve folders as they are (tests without an adapter store)
        self.max_lora_rank = max_lora_rank
        self.lora_config = lora_config  # the engine as configured (registry.knobs.engine_lora); None: the rank alone
        self.base = base

    def admit(self, registry: Registry, adapter: AdapterSpec) -> object:
        """The reconciler's check before a (re)load: an adapter registered inside its tenant's folder is checked
        again for escaping links (the tenant may have swapped files since); one the operator registered elsewhere is
        trusted. Then the admission checks against the engine's slot rank and the base read at start."""
        found = registry.find_adapter(adapter.name)
        if found is not None:
            folder = tenant_folder(self.config.adapters_root, found[0].id)
            path = registry.adapter_path(adapter)
            try:
                requested_dir(folder, str(path))
            except TenantserveError:
                pass  # operator-trusted: outside the tenant's folder
            else:
                check(f"adapter '{adapter.name}'", inspect(folder, path), ())
        return self._admit(registry, adapter)

    def _admit(self, registry: Registry, adapter: AdapterSpec) -> object:
        return admit(registry, adapter, max_lora_rank=self.max_lora_rank, base=self.base, lora_config=self.lora_config)

    def _check_ownership(self, registry: Registry, tenant_id: str, spec: AdapterSpec, folder: Path) -> Layout:
        """The ownership rule for a runtime onboarding (reads the disk: run in a thread)."""
        others = [(t.id, os.path.realpath(registry.adapter_path(a))) for t, a in registry.adapters()
                  if t.id != tenant_id]
        layout = inspect(folder, spec.path)
        check(f"adapter '{spec.name}'", layout, others)
        return layout

    @asynccontextmanager
    async def _operation(self, name: str) -> AsyncIterator[dict[str, str]]:
        """Count and time one admin operation; the handler may set ``outcome["result"]``."""
        outcome = {"result": "ok"}
        start = time.perf_counter()
        try:
            yield outcome
        except TenantserveError as exc:
            outcome["result"] = "refused" if exc.http_status < 500 else "failed"
            raise
        finally:
            self.metrics.operations.labels(name, outcome["result"]).inc()
            self.metrics.operation_seconds.labels(name).observe(time.perf_counter() - start)

    async def _registry(self) -> Registry:
        return await asyncio.to_thread(self.store.load)

    # -- tenants ---------------------------------------------------------------------------------------------------

    async def tenants(self) -> list[TenantSpec]:
        return (await self._registry()).tenants

    async def add_tenant(self, body: TenantCreate) -> tuple[TenantSpec, bool]:
        """(tenant, created). Repeating the same call is a no-op; the same id with other settings is a conflict."""
        async with self._operation("onboard_tenant") as outcome, self.store.lock(f"tenant:{body.id}"):
            def change(registry: Registry) -> tuple[TenantSpec, bool]:
                if (existing := registry.tenant(body.id)) is not None:
                    if existing.allow_base != body.allow_base:
                        raise Conflict(f"tenant '{body.id}' exists with allow_base={existing.allow_base}",
                                       code="tenant_exists")
                    return existing, False
                tenant = TenantSpec(id=body.id, allow_base=body.allow_base)
                registry.tenants.append(tenant)
                return tenant, True

            existing = (await self._registry()).tenant(body.id)
            if existing is not None and existing.allow_base == body.allow_base:
                outcome["result"] = "unchanged"
                return existing, False
            return await self.store.mutate(change)

    async def remove_tenant(self, tenant_id: str) -> list[OffboardView]:
        async with self._operation("offboard_tenant"), self.store.lock(f"tenant:{tenant_id}"):
            tenant = self._tenant(await self._registry(), tenant_id)
            results = [await self.remove_adapter(tenant_id, a.name) for a in tenant.adapters]

            def change(registry: Registry) -> None:
                registry.tenants = [t for t in registry.tenants if t.id != tenant_id]

            await self.store.mutate(change)
            return results

    @staticmethod
    def _tenant(registry: Registry, tenant_id: str) -> TenantSpec:
        return find_tenant(registry, tenant_id)

    # -- adapters --------------------------------------------------------------------------------------------------

    def adapters(self) -> list[AdapterStatus]:
        return self.board.all()

    async def add_adapter(self, tenant_id: str, body: AdapterCreate) -> tuple[AdapterStatus, bool]:
        """(status, created): 201 only once the adapter is listed by the engine and a warm-up went through it."""
        async with self._operation("onboard_adapter") as outcome, self.store.lock(f"adapter:{body.name}"):
            registry = await self._registry()
            self._tenant(registry, tenant_id)
            folder = tenant_folder(self.config.adapters_root, tenant_id)
            spec = AdapterSpec(name=body.name, path=requested_dir(folder, body.path),
                               base_fingerprint=body.base_fingerprint,
                               allow_unverified_base=body.allow_unverified_base)
            path = str(spec.path)
            if body.name == registry.base.name:
                raise Conflict(f"'{body.name}' is the base model's name", code="adapter_exists")
            registered = registry.find_adapter(body.name)
            if registered is not None:
                owner, current = registered
                same = (owner.id == tenant_id and str(registry.adapter_path(current)) == path
                        and current.base_fingerprint == body.base_fingerprint)
                if not same:
                    raise Conflict(f"adapter '{body.name}' is already registered (tenant {owner.id}, "
                                   f"path {registry.adapter_path(current)})", code="adapter_exists")
            await asyncio.to_thread(self._check_ownership, registry, tenant_id, spec, folder)
            try:
                path, pinned = await asyncio.to_thread(self._admit_copy, registry, tenant_id,
                                                       spec if registered is None else registered[1],
                                                       registered is None)
            except AdapterError as exc:
                if exc.code == "base_undeclared":  # name the fixes in the operator's terms, not the store copy's
                    raise self._undeclared(body.name, spec.path) from None
                raise
            if pinned is not None:
                spec = spec.model_copy(update={"fingerprint": pinned})
            status = await self._make_servable(tenant_id, body.name, path, persist=registered is None, spec=spec)
            if self.content is not None:
                self.content.loaded(body.name, registry.adapter_path(spec), path)
            outcome["result"] = "created" if registered is None else "unchanged"
            return status, registered is None

    def _undeclared(self, name: str, folder: Path) -> AdapterError:
        served = f" (the served base is {self.base.fingerprint.value})" if self.base is not None else ""
        return AdapterError(
            f"adapter '{name}' does not declare the base it was trained on: run `tenantserve stamp {folder} --base "
            f"BASE_DIR` with its training base, or pass `--base-fingerprint sha256:...` to `tenantserve adapters add` "
            f"(`base_fingerprint` in the API){served}, or `--allow-unverified-base` (`allow_unverified_base: true`) "
            "to serve it anyway", code="base_undeclared")

    def _admit_copy(self, registry: Registry, tenant_id: str, spec: AdapterSpec, new: bool) -> tuple[str, str | None]:
        """Copy the folder into the adapter store and admit the copy: (the path to load, its fingerprint to pin).
        A repeat of a registered adapter is held to its admitted content (``adapter_changed``). Blocking I/O."""
        if self.content is None:
            self._admit(registry, spec)
            return str(registry.adapter_path(spec)), None
        if new:
            path = self.content.put(registry, tenant_id, spec).path
        else:
            path = self.content.resolve(registry, tenant_id, spec, None)
        self._admit(registry, spec.model_copy(update={"path": path}))
        return str(path), self.content.store.fingerprint_of(path)

    async def _make_servable(self, tenant_id: str, name: str, path: str, *, persist: bool,
                             spec: AdapterSpec) -> AdapterStatus:
        self.board.ensure(name, tenant_id, path)
        self.board.set(name, AdapterState.LOADING)
        loaded_here = persisted_here = False
        try:
            if persist:  # registered first: the engine's counters label it by name from its first load
                await self.store.mutate(lambda registry: self._append(registry, tenant_id, spec))
                persisted_here = True
            _, actual = await self.engine.models()
            load_seconds = None
            if actual.get(name) != path:
                if name in actual:  # an unregistered leftover under this name: the registry wins
                    await self.engine.unload(name)
                load_seconds = await self.engine.load(name, path)
                loaded_here = True
                _, actual = await self.engine.models()
                if actual.get(name) != path:
                    raise NotServable(f"adapter '{name}' was loaded but the engine does not list it")
            warmup = await self.engine.complete(name, self.config.warmup_prompt, max_tokens=1)
        except BaseException as exc:
            if loaded_here:
                await _best_effort(self.engine.unload(name))
            if persisted_here:  # a refused onboarding leaves the registry as it was
                await _best_effort(self.store.mutate(lambda registry: self._withdraw(registry, name)))
            if persist:
                self.board.discard(name)
            elif isinstance(exc, TenantserveError):
                self.board.fail(name, exc, backoff_initial=self.config.backoff_initial,
                                backoff_max=self.config.backoff_max)
            raise
        self.metrics.warmup_seconds.observe(warmup)
        status = self.board.ensure(name, tenant_id, path)
        self.board.set(name, AdapterState.LOADED, last_error=None, error_code=None, attempts=0,
                       load_seconds=load_seconds if load_seconds is not None else status.load_seconds,
                       warmup_seconds=warmup)
        return status

    @staticmethod
    def _withdraw(registry: Registry, name: str) -> None:
        for tenant in registry.tenants:
            tenant.adapters = [a for a in tenant.adapters if a.name != name]

    def _append(self, registry: Registry, tenant_id: str, spec: AdapterSpec) -> None:
        tenant = self._tenant(registry, tenant_id)
        if registry.find_adapter(spec.name) is not None:
            raise Conflict(f"adapter '{spec.name}' was registered meanwhile", code="adapter_exists")
        tenant.adapters.append(_relative(registry, spec))

    async def remove_adapter(self, tenant_id: str, name: str) -> OffboardView:
        async with self._operation("offboard_adapter"), self.store.lock(f"adapter:{name}"):
            registry = await self._registry()
            self._tenant(registry, tenant_id)
            found = registry.find_adapter(name)
            if found is None or found[0].id != tenant_id:
                raise NotFound(f"tenant '{tenant_id}' has no adapter '{name}'", code="adapter_not_found")

            await self.store.mutate(lambda registry: self._withdraw(registry, name))
            self.board.discard(name)
            if self.content is not None:
                self.content.forget(name)
            try:
                unloaded = await self.engine.unload(name)
            except EngineError:
                unloaded = False  # engine down: nothing serves it, and the reconciler will not bring it back
            start = time.perf_counter()
            drained = await self._drain(name) if unloaded else True
            return OffboardView(name=name, tenant=tenant_id, unloaded=unloaded, drained=drained,
                                drain_seconds=round(time.perf_counter() - start, 4))

    async def _drain(self, name: str) -> bool:
        """Wait until vLLM reports no request for ``name`` running or waiting, at most ``drain_timeout``."""
        deadline = time.monotonic() + self.config.drain_timeout
        while True:
            try:
                busy = await self.engine.busy_adapters()
            except Exception:  # metrics unavailable: nothing to wait on
                return True
            if busy is None or name not in busy:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)


def _relative(registry: Registry, spec: AdapterSpec) -> AdapterSpec:
    """The entry as written to the registry: its path relative to the registry file's directory, like hand-written
    entries (``../adapters/hooli/sql-v1``), when that resolves back to exactly the same folder (no symlink on the
    way); otherwise absolute."""
    if not spec.path.is_absolute():
        return spec
    relative = Path(os.path.relpath(spec.path, registry.root))
    return spec.model_copy(update={"path": relative}) if registry.resolve(relative) == spec.path else spec


async def _best_effort(coro: object) -> None:
    try:
        await coro  # type: ignore[misc]
    except Exception:
        pass
