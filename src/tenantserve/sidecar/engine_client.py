"""The vLLM API server as the sidecar sees it: health, the adapters it serves, load, unload, one completion.

vLLM answers a load with 400 when the name is taken, 404 when the path is not an adapter, and 500 for everything the
engine itself refuses (rank above ``max_lora_rank``, unknown target modules). Those become typed errors here, once.
The admin token goes on every call: the tenant middleware locks load/unload to it. ``load_inplace`` is never sent
(with it, vLLM would reload the adapter from disk on every step).
"""

from __future__ import annotations

import re
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tenantserve.errors import AdapterError, EngineError

_RANK = re.compile(r"rank (\d+) is greater than max_lora_rank (\d+)")


class AdapterAlreadyLoaded(EngineError):
    code = "already_loaded"
    http_status = 409


class EngineClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 120.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout,
                                         transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def healthy(self) -> bool:
        try:
            return (await self._client.get("/health", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def models(self) -> tuple[str | None, dict[str, str]]:
        """(base model name, {adapter name: path}) as listed by ``/v1/models``: the actual state."""
        data = (await self._get_json("/v1/models"))["data"]
        base = next((m["id"] for m in data if not m.get("parent")), None)
        return base, {m["id"]: m.get("root") or "" for m in data if m.get("parent")}

    async def load(self, name: str, path: str) -> float:
        """Load one adapter; return the seconds vLLM took. Raises typed errors for every refusal."""
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
        """Forget the adapter's name (new requests get 404). False when the engine did not know it."""
        resp = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if resp.status_code == 404:
            return False
        if resp.status_code != 200:
            raise EngineError(f"unloading '{name}' failed: HTTP {resp.status_code}: {_message(resp)}")
        return True

    async def complete(self, model: str, prompt: str, *, max_tokens: int = 1) -> float:
        """One greedy completion through ``model``; the seconds it took."""
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
        resp = await self._client.get("/metrics", timeout=10.0)
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
        try:
            resp = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise EngineError(f"engine at {self.base_url} unreachable: {exc!r}") from None
        if resp.status_code != 200:
            raise EngineError(f"GET {path}: HTTP {resp.status_code}: {_message(resp)}")
        return resp.json()

    async def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
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
