"""Converge the engine to the registry: desired (the file) vs actual (``/v1/models``), continuously.

``diff`` is the pure core. A pass whose engine does not prove its identity ends as ``engine_unverified`` (nothing is
sent to it with the admin token; the next pass tries again). ``Reconciler`` runs it on start, every ``reconcile_interval``, when the registry file
changes, when the engine comes back healthy (a restart forgets every runtime-loaded adapter), and when a failed
adapter's backoff expires. It takes the adapter's lock before acting and re-checks the registry if an admin operation
changed it meanwhile, so it never undoes an onboarding or offboarding in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tenantserve.errors import AdapterError, EngineError, RegistryError, TenantserveError
from tenantserve.registry.schema import AdapterSpec, Registry
from tenantserve.registry.watch import FileWatch
from tenantserve.sidecar.config import SidecarConfig
from tenantserve.sidecar.content import ServedContent
from tenantserve.sidecar.engine_client import AdapterAlreadyLoaded, EngineClient, EngineUnverified
from tenantserve.sidecar.metrics import SidecarMetrics
from tenantserve.sidecar.state import AdapterState, StatusBoard
from tenantserve.sidecar.store import RegistryStore

Admit = Callable[[Registry, AdapterSpec], object]


@dataclass(frozen=True)
class ReconcilePlan:
    load: tuple[str, ...] = ()
    unload: tuple[str, ...] = ()
    #: Registered under the same name but loaded from another path: unload, then load from the registry's path.
    replace: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.load or self.unload or self.replace)


def diff(desired: Mapping[str, str], actual: Mapping[str, str]) -> ReconcilePlan:
    """What to do so that ``actual`` ({name: path} on the engine) becomes ``desired``. Pure."""
    return ReconcilePlan(
        load=tuple(sorted(n for n in desired if n not in actual)),
        unload=tuple(sorted(n for n in actual if n not in desired)),
        replace=tuple(sorted(n for n in desired if n in actual and actual[n] != desired[n])),
    )


@dataclass
class ReconcileStatus:
    runs: int = 0
    last_result: str | None = None
    last_run_at: float | None = None
    last_seconds: float | None = None
    last_error: str | None = None
    last_plan: dict[str, list[str]] = field(default_factory=dict)
    engine_healthy: bool = False
    #: The engine proved it holds the admin token (``identity``); False: it is sent no token, nothing is loaded;
    #: None: no token to send (``security.auth: false``), nothing to prove.
    engine_verified: bool | None = False


class Reconciler:
    """Keeps the engine converged to the registry: a pass on start, every ``reconcile_interval`` seconds, when the
    registry file changes, when the engine comes back healthy, and when a failed adapter's backoff expires
    (``trigger``: a pass now).

    Owns its background tasks (``start`` / ``stop``) and ``status`` (the last pass: result, plan, error, the engine's
    health and proven identity; ``GET /admin/reconcile``). It loads and unloads adapters through ``EngineClient``,
    each under the store's lock for that adapter's name, checks each with ``admit`` before a (re)load
    (``AdminService.admit``), records states on the ``StatusBoard``, and never writes the registry.

    Nothing escapes its loop: a pass's failures are counted, shown on the board and retried with backoff.
    ``run_once`` returns the pass's result: ``ok``, ``error``, ``registry_invalid``, ``engine_down`` or
    ``engine_unverified``.
    """

    def __init__(self, store: RegistryStore, engine: EngineClient, board: StatusBoard, metrics: SidecarMetrics,
                 config: SidecarConfig, admit: Admit, *, content: ServedContent | None = None) -> None:
        self.store, self.engine, self.board, self.metrics, self.config = store, engine, board, metrics, config
        self._admit = admit
        #: Serve adapter-store copies, and withdraw an adapter whose folder no longer holds the admitted content.
        self._content = content
        self.status = ReconcileStatus()
        self._wake = asyncio.Event()
        self._run_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._wake.set()
        self._tasks = [asyncio.create_task(c) for c in (self._loop(), self._watch_health(), self._watch_file())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def trigger(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_wake())
            self._wake.clear()
            await self.run_once()

    def _next_wake(self) -> float:
        now = time.monotonic()
        retries = [s.next_retry - now for s in self.board.all() if s.state is AdapterState.FAILED]
        return max(0.05, min([self.config.reconcile_interval, *retries]))

    async def _watch_health(self) -> None:
        while True:
            healthy = await self.engine.healthy()
            if healthy and not self.status.engine_healthy:
                self.trigger()
            self.status.engine_healthy = healthy
            await asyncio.sleep(self.config.health_interval)

    async def _watch_file(self) -> None:
        """A pass whenever the file changes (``registry.watch``: mtime in ns, size, inode). The pass reads it through
        the store, which keeps the last good registry and the error of a broken one."""
        watch = FileWatch(self.store.path)
        watch.changed()  # the version the first pass (``start``) reads
        while True:
            await asyncio.sleep(self.config.watch_interval)
            if watch.changed():
                self.trigger()

    # -- one pass --------------------------------------------------------------------------------------------------

    async def run_once(self) -> str:
        async with self._run_lock:
            start = time.perf_counter()
            result = await self._pass()
            self.status.runs += 1
            self.status.last_result = result
            self.status.last_run_at = time.time()
            self.status.last_seconds = time.perf_counter() - start
            self.metrics.reconcile_runs.labels(result).inc()
            return result

    async def _pass(self) -> str:
        generation = self.store.generation
        try:
            registry = await asyncio.to_thread(self.store.load)
        except RegistryError as exc:  # never act on a half-edited file: keep serving what is loaded
            self.status.last_error = str(exc)
            return "registry_invalid"
        self.engine.send_token = registry.security.auth
        try:
            _, actual = await self.engine.models()
        except EngineUnverified as exc:  # never send it the token; retried every pass
            self.status.engine_verified = False
            self.status.last_error = str(exc)
            return "engine_unverified"
        except EngineError as exc:
            self.status.engine_healthy = self.status.engine_verified = False
            self.status.last_error = str(exc)
            return "engine_down"
        self.status.engine_healthy = True
        self.status.engine_verified = self.engine.verified if self.engine.needs_proof else None
        desired = {a.name: (t.id, str(registry.adapter_path(a))) for t, a in registry.adapters()}
        self.board.retain(set(desired))
        withdrawn: dict[str, tuple[str, str, TenantserveError]] = {}
        if self._content is not None:  # each folder re-fingerprinted (a stat per unchanged file)
            desired, withdrawn = await asyncio.to_thread(self._resolve, registry, actual)
        failures = sum(self._show_withdrawn(n, t, folder, error) for n, (t, folder, error) in withdrawn.items())
        for name, (tenant, path) in desired.items():
            self.board.ensure(name, tenant, path)
            state = self.board.get(name).state  # type: ignore[union-attr]
            if actual.get(name) == path and state is not AdapterState.LOADED:
                self.board.set(name, AdapterState.LOADED, last_error=None, error_code=None, attempts=0)
            elif actual.get(name) != path and state is AdapterState.LOADED:  # the engine lost it (a restart)
                self.board.set(name, AdapterState.DESIRED)
        plan = diff({n: p for n, (_, p) in desired.items()}, {n: p for n, p in actual.items() if n not in withdrawn})
        withdraw = sorted(n for n in withdrawn if n in actual)
        self.status.last_plan = {"load": list(plan.load), "unload": list(plan.unload), "replace": list(plan.replace),
                                 "withdraw": withdraw}
        if plan.empty and not withdraw and not failures:
            self.status.last_error = None
            return "ok"
        sem = asyncio.Semaphore(self.config.load_concurrency)
        ctx = _PassContext(registry, generation)
        jobs = [self._unload(n, ctx, sem) for n in plan.unload]
        jobs += [self._withdraw(n, sem) for n in withdraw]
        jobs += [self._load(n, ctx, sem, replace=n in plan.replace) for n in (*plan.load, *plan.replace)]
        errors = sum(await asyncio.gather(*jobs)) + failures
        if errors:
            self.metrics.reconcile_errors.inc(errors)
            return "error"
        self.status.last_error = None
        return "ok"

    def _resolve(self, registry: Registry, actual: Mapping[str, str]
                 ) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str, TenantserveError]]]:
        """Each adapter's store copy ({name: (tenant, path)}), and the adapters whose folder no longer holds their
        admitted content ({name: (tenant, folder, error)}). Blocking: run in a thread."""
        assert self._content is not None
        desired: dict[str, tuple[str, str]] = {}
        withdrawn: dict[str, tuple[str, str, TenantserveError]] = {}
        for tenant, adapter in registry.adapters():
            folder = str(registry.adapter_path(adapter))
            try:
                desired[adapter.name] = (tenant.id, str(self._content.resolve(registry, tenant.id, adapter,
                                                                              actual.get(adapter.name))))
            except TenantserveError as exc:
                withdrawn[adapter.name] = (tenant.id, folder, exc)
            except OSError as exc:
                withdrawn[adapter.name] = (tenant.id, folder, AdapterError(
                    f"adapter '{adapter.name}': cannot read {folder}: {exc.strerror or exc}", code="unreadable"))
        self._content.retain(set(desired) | set(withdrawn))
        return desired, withdrawn

    def _show_withdrawn(self, name: str, tenant: str, folder: str, error: TenantserveError) -> int:
        """``failed`` with the reason, checked again every pass; counted as a failed attempt (with backoff) like a
        failed load, so restored files load at the next retry. Returns 1 when an attempt was counted."""
        status = self.board.get(name)
        if status is None or status.tenant != tenant:
            status = self.board.ensure(name, tenant, folder)
        if status.state is AdapterState.FAILED and time.monotonic() < status.next_retry:
            if status.error_code != error.code or status.last_error != str(error):
                self.board.set(name, AdapterState.FAILED, last_error=str(error), error_code=error.code)
            return 0
        self.board.fail(name, error, backoff_initial=self.config.backoff_initial, backoff_max=self.config.backoff_max)
        self.status.last_error = f"{name}: {error}"
        return 1

    async def _withdraw(self, name: str, sem: asyncio.Semaphore) -> int:
        """Unload a registered adapter whose folder changed (its store copy would still serve the old content)."""
        lock = self.store.lock(f"adapter:{name}")
        if lock.locked():
            return 0
        async with lock, sem:
            return await self._unload_noting_errors(name)

    async def _unload_noting_errors(self, name: str) -> int:
        """Unload ``name``: 0, or 1 with the error noted in the status when the engine refuses (errors are counted
        per pass)."""
        try:
            await self.engine.unload(name)
        except TenantserveError as exc:
            self.status.last_error = str(exc)
            return 1
        return 0

    async def _fresh(self, ctx: _PassContext) -> Registry:
        """The registry to decide with: re-read if an admin operation wrote it since this pass read it."""
        if self.store.generation != ctx.generation:
            ctx.registry = await asyncio.to_thread(self.store.load)
            ctx.generation = self.store.generation
        return ctx.registry

    async def _unload(self, name: str, ctx: _PassContext, sem: asyncio.Semaphore) -> int:
        lock = self.store.lock(f"adapter:{name}")
        if lock.locked():
            return 0  # an admin operation owns this adapter right now
        async with lock, sem:
            if (await self._fresh(ctx)).find_adapter(name) is not None:
                return 0
            return await self._unload_noting_errors(name)

    async def _load(self, name: str, ctx: _PassContext, sem: asyncio.Semaphore, *, replace: bool) -> int:
        lock = self.store.lock(f"adapter:{name}")
        if lock.locked():
            return 0
        async with lock, sem:
            registry = await self._fresh(ctx)
            found = registry.find_adapter(name)
            status = self.board.get(name)
            if found is None or status is None:
                return 0
            if status.state is AdapterState.FAILED and time.monotonic() < status.next_retry:
                return 0
            tenant, adapter = found
            folder = registry.adapter_path(adapter)
            path = str(folder)
            self.board.set(name, AdapterState.LOADING)
            try:
                if self._content is not None:  # load the store copy, and admit exactly that
                    path = str(await asyncio.to_thread(self._content.resolve, registry, tenant.id, adapter, None))
                    adapter = adapter.model_copy(update={"path": Path(path)})
                await asyncio.to_thread(self._admit, registry, adapter)
                if replace:
                    await self.engine.unload(name)
                seconds = await self.engine.load(name, path)
            except AdapterAlreadyLoaded:
                self.board.set(name, AdapterState.LOADED)
                return 0
            except TenantserveError as exc:
                self.board.fail(name, exc, backoff_initial=self.config.backoff_initial,
                                backoff_max=self.config.backoff_max)
                self.status.last_error = f"{name}: {exc}"
                return 1
            self.board.set(name, AdapterState.LOADED, load_seconds=seconds, last_error=None, error_code=None,
                           attempts=0)
            if self._content is not None:
                self._content.loaded(name, folder, path)
            return 0


@dataclass
class _PassContext:
    registry: Registry
    generation: int
