"""The vLLM API server as the sidecar sees it: health, the adapters it serves, load, unload, one completion.

vLLM answers a load with 400 when the name is taken, 404 when the path is not an adapter, and 500 for everything the
engine itself refuses (rank above ``max_lora_rank``, unknown target modules). Those become typed errors here, once.
``load_inplace`` is never sent (with it, vLLM would reload the adapter from disk on every step).

The admin token goes only to a server that proved it is this engine: before the first call that carries it (and
again after any connection failure or failed health check, since another program may hold the port by then), the
client sends a fresh nonce to ``POST /tenantserve/identity`` and checks the answer with ``identity.verify`` against
the engine URL's port. Until that succeeds, nothing with the token is sent (``EngineUnverified``). When the registry
says ``security.auth: false`` there is no middleware and vLLM checks no token: then no token is sent at all.
``/health`` never carries it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tenantserve.bearer import bearer_header
from tenantserve.engine import identity
from tenantserve.errors import AdapterError, EngineError

log = logging.getLogger("tenantserve.sidecar")

_RANK = re.compile(r"rank (\d+) is greater than max_lora_rank (\d+)")


class AdapterAlreadyLoaded(EngineError):
    code = "already_loaded"
    http_status = 409


class EngineUnverified(EngineError):
    """The server at the engine URL did not prove it holds the admin token: it is not sent the token."""

    code = "engine_unverified"


class EngineClient:
    """The sidecar's one client of the vLLM API server it runs next to (``base_url``, e.g. ``http://127.0.0.1:8000``).

    Owns the HTTP connection pool (closed by ``aclose``), the admin token and the engine's proof of identity
    (``verified``): the token is sent only after the proof, never to ``/health``, never when ``send_token`` is False
    (``security.auth: false``); the proof is forgotten on any connection failure or failed health check.
    ``timeout``: seconds per request (a load may take long); ``transport``: for tests where no engine can run.

    Raises ``EngineUnverified`` (no proof: nothing carrying the token was sent), ``EngineError`` (unreachable, or an
    unexpected HTTP status), and from ``load`` ``AdapterAlreadyLoaded`` (409) or ``AdapterError`` (path_missing,
    rank_too_high, engine_refused, engine_load_failed). ``busy_adapters`` lets httpx's errors through (its caller
    treats any failure as "nothing to wait on").
    """

    def __init__(self, base_url: str, *, token: str | None = None, send_token: bool = True, timeout: float = 120.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        url = httpx.URL(self.base_url)
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._token = token
        #: The registry's ``security.auth``: False means plain vLLM, which is sent no token at all.
        self.send_token = send_token
        #: True once the server at ``base_url`` answered the identity challenge; reset on any connection failure.
        self.verified = False
        self._verify_lock = asyncio.Lock()
        self._unverified_logged = False
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def healthy(self) -> bool:
        """``/health`` answers 200 (no token sent). A failure forgets the engine's proven identity."""
        try:
            ok = (await self._client.get("/health", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            self.verified = False
        return ok

    async def verify(self) -> None:
        """Challenge the server at ``base_url`` (no token sent); raise ``EngineUnverified`` unless it proves it holds
        the admin token for this port. Logs one line when an engine turns out unverified, one when it is proven."""
        async with self._verify_lock:
            if self.verified or self._token is None:
                return
            nonce = identity.new_nonce()
            try:
                resp = await self._client.post(identity.IDENTITY_ROUTE, json={"nonce": nonce}, timeout=10.0)
            except httpx.HTTPError as exc:
                raise EngineError(f"engine at {self.base_url} unreachable: {exc!r}") from None
            try:
                answer = resp.json().get("proof") if resp.status_code == 200 else None
            except (ValueError, AttributeError):
                answer = None
            if not identity.verify(self._token, nonce, self.port, answer):
                message = (f"the server at {self.base_url} did not prove it is this tenantserve engine (HTTP "
                           f"{resp.status_code} on {identity.IDENTITY_ROUTE}): the admin token is not sent to it")
                if not self._unverified_logged:
                    log.error("%s; retrying", message)
                    self._unverified_logged = True
                raise EngineUnverified(message)
            self.verified, self._unverified_logged = True, False
            log.info("the engine at %s proved its identity; sending it the admin token", self.base_url)

    @property
    def needs_proof(self) -> bool:
        """Is there a token to send (so the engine must prove its identity first)?"""
        return self._token is not None and self.send_token

    async def _headers(self) -> dict[str, str]:
        """The Authorization header, once the engine is proven; none when the engine checks no token."""
        if not self.needs_proof:
            return {}
        await self.verify()
        return bearer_header(self._token)

    async def models(self) -> tuple[str | None, dict[str, str]]:
        """(base model name, {adapter name: path}) as listed by ``/v1/models``: the actual state. ``EngineError``
        when the engine cannot be reached or answers other than 200."""
        data = (await self._get_json("/v1/models"))["data"]
        base = next((m["id"] for m in data if not m.get("parent")), None)
        return base, {m["id"]: m.get("root") or "" for m in data if m.get("parent")}

    async def load(self, name: str, path: str) -> float:
        """Load one adapter from ``path`` (a directory on the engine's host) under ``name``; return the seconds vLLM
        took. Raises ``AdapterAlreadyLoaded``, ``AdapterError`` (a reason per refusal) or ``EngineError``."""
        start = time.perf_counter()
        resp = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        elapsed = time.perf_counter() - start
        if resp.status_code == 200:
            return elapsed
        message = _message(resp)
        if resp.status_code == 400 and "already been loaded" in message:
            raise AdapterAlreadyLoaded(f"adapter '{name}' is already loaded on the engine")
        if resp.status_code == 404:
            raise AdapterError(f"adapter '{name}': the engine found no adapter at {path}: {message}",
                               code="path_missing")
        if (m := _RANK.search(message)) is not None:
            raise AdapterError(f"adapter '{name}' has rank {m[1]} > the engine's max_lora_rank {m[2]}",
                               code="rank_too_high")
        if resp.status_code < 500:
            raise AdapterError(f"adapter '{name}': the engine refused it: {message}", code="engine_refused")
        raise AdapterError(f"adapter '{name}': the engine failed to load it: {message}", code="engine_load_failed")

    async def unload(self, name: str) -> bool:
        """Forget the adapter's name (new requests get 404). False when the engine did not know it; ``EngineError``
        for any other failure."""
        resp = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if resp.status_code == 404:
            return False
        if resp.status_code != 200:
            raise EngineError(f"unloading '{name}' failed: HTTP {resp.status_code}: {_message(resp)}")
        return True

    async def complete(self, model: str, prompt: str, *, max_tokens: int = 1) -> float:
        """One greedy completion of ``max_tokens`` tokens through ``model``; the seconds it took. ``EngineError`` when
        it fails."""
        start = time.perf_counter()
        resp = await self._post("/v1/completions",
                                {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
        if resp.status_code != 200:
            raise EngineError(f"warm-up completion through '{model}' failed: HTTP {resp.status_code}: "
                              f"{_message(resp)}")
        return time.perf_counter() - start

    async def busy_adapters(self) -> set[str] | None:
        """Adapters with requests running or waiting; ``None`` when nothing at all is in flight.

        Read from vLLM's ``vllm:lora_requests_info`` (newest label set) and ``vllm:num_requests_*`` gauges.
        """
        resp = await self._client.get("/metrics", timeout=10.0, headers=await self._headers())
        resp.raise_for_status()
        in_flight = 0.0
        newest: tuple[float, set[str]] = (-1.0, set())
        for family in text_string_to_metric_families(resp.text):
            for s in family.samples:
                if s.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                    in_flight += s.value
                elif s.name == "vllm:lora_requests_info" and s.value > newest[0]:
                    names = {n for key in ("running_lora_adapters", "waiting_lora_adapters")
                             for n in s.labels.get(key, "").split(",") if n}
                    newest = (s.value, names)
        return None if in_flight == 0 else newest[1]

    async def _get_json(self, path: str) -> dict:
        headers = await self._headers()
        try:
            resp = await self._client.get(path, headers=headers)
        except httpx.HTTPError as exc:
            self.verified = False
            raise EngineError(f"engine at {self.base_url} unreachable: {exc!r}") from None
        if resp.status_code != 200:
            raise EngineError(f"GET {path}: HTTP {resp.status_code}: {_message(resp)}")
        return resp.json()

    async def _post(self, path: str, body: dict) -> httpx.Response:
        headers = await self._headers()
        try:
            return await self._client.post(path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            self.verified = False
            raise EngineError(f"engine at {self.base_url} unreachable: {exc!r}") from None


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message", err))[:300]
        return str(err)[:300]
    return str(body)[:300]
