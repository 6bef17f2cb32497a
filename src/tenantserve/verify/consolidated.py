"""The consolidated side: the adapter's requests on the shared engine, inside batches mixed with other models.

Before each wave of the adapter's requests, one long streamed request per companion model (other tenants'
adapters, the base) is started and must have produced a token: it is then running in the engine's batch. The wave
is sent concurrently; when it is done every companion must still be running (it asks for ``ignore_eos`` and as many
tokens as the context allows), so every request of the wave shared its scheduler steps with all of them. Then the
companions are dropped (vLLM aborts a request whose client disconnects). ``mixed_with`` reports what held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import openai

from tenantserve.bearer import bearer_header
from tenantserve.errors import AdapterError, EngineError
from tenantserve.verify.compare import Generation
from tenantserve.verify.prompts import PromptCase, PromptsError

T = TypeVar("T")

#: Requests of the verified model sent together (each wave gets fresh companions).
WAVE_SIZE = 32
_TOKEN_ID = "token_id:"


@dataclass(frozen=True)
class EngineResult:
    """One request's generation on the engine, with the companion models started beside it."""

    generation: Generation
    companions: tuple[str, ...]  # models started beside it
    mixed_with: tuple[str, ...]  # those that were running for its whole life


class Consolidated:
    """OpenAI-API client of one engine. ``api_key``: the admin token on a secured engine (any model), else None."""

    def __init__(self, url: str, *, api_key: str | None = None, top_k: int = 5, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.top_k = top_k
        self.timeout = timeout
        self._api_key = api_key
        self._client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "none", max_retries=0,
                                     timeout=timeout)

    def served_models(self) -> list[str]:
        """The models the engine lists (with the admin token: all of them)."""
        return [m.id for m in _call(self, lambda: self._client.models.list().data)]

    def run(self, model: str, cases: list[PromptCase], companions: list[str], *,
            wave_size: int = WAVE_SIZE) -> list[EngineResult]:
        """Greedy, top-k logprobs, in waves of ``wave_size`` concurrent requests mixed with ``companions``."""
        results: list[EngineResult] = []
        for start in range(0, len(cases), wave_size):
            wave = cases[start:start + wave_size]
            with self.mixed_batch(companions, wave[0].prompt) as running:
                with ThreadPoolExecutor(len(wave)) as pool:
                    generations = list(pool.map(lambda c: self.complete(model, c), wave))
                mixed = tuple(c.model for c in running if c.ran_throughout())
            results += [EngineResult(g, tuple(companions), mixed) for g in generations]
        return results

    def complete(self, model: str, case: PromptCase) -> Generation:
        """One greedy completion with token ids and top-k logprobs (vLLM's ``return_tokens_as_token_ids``)."""
        resp = _call(self, lambda: self._client.completions.create(
            model=model, prompt=case.prompt, max_tokens=case.max_tokens, temperature=0, logprobs=self.top_k,
            extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True}), model=model)
        return parse_choice(resp.choices[0].model_dump())

    @property
    def api_key(self) -> str | None:
        return self._api_key

    @contextmanager
    def mixed_batch(self, models: list[str], prompt: str) -> Iterator[list[_Companion]]:
        """One running companion request per model for the block's duration (see the module docstring)."""
        running = [_Companion(self, m, prompt) for m in models]
        for c in running:
            c.start()
        try:
            for c in running:
                c.wait_started(self.timeout)
            yield running
        finally:
            for c in running:
                c.stop.set()
            for c in running:
                c.join(self.timeout)

    def tokenize(self, model: str, prompt: str) -> tuple[int, int]:
        """(prompt tokens, the engine's max_model_len), from vLLM's ``/tokenize``."""
        headers = bearer_header(self._api_key)
        try:
            resp = httpx.post(f"{self.url}/tokenize", json={"model": model, "prompt": prompt}, headers=headers,
                              timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach the engine at {self.url}: {exc}", code="engine_unreachable") from None
        if resp.status_code != 200:
            raise EngineError(f"the engine refused /tokenize for '{model}' (HTTP {resp.status_code}): "
                              f"{resp.text[:200]}", code="engine_error")
        body = resp.json()
        return int(body["count"]), int(body["max_model_len"])

    def check_lengths(self, model: str, cases: list[PromptCase]) -> None:
        """Every prompt plus its ``max_tokens`` fits the engine's context, or ``PromptsError`` naming the first."""
        for number, case in enumerate(cases, start=1):
            count, limit = self.tokenize(model, case.prompt)
            if count + case.max_tokens > limit:
                raise PromptsError(f"prompt {number} ({case.prompt[:40]!r}) has {count} tokens + max_tokens "
                                   f"{case.max_tokens} > the engine's max_model_len {limit}")


class _Companion(threading.Thread):
    """Streamed requests that keep a model in the batch until told to stop. One normally does; if it reaches the
    end of the context first, the next one starts at once (``restarts`` counts them: each is a gap of a step or
    two in which the model was not in the batch, so ``ran_throughout`` is then False)."""

    def __init__(self, owner: Consolidated, model: str, prompt: str) -> None:
        super().__init__(daemon=True, name=f"verify-companion-{model}")
        self.owner, self.model, self.prompt = owner, model, prompt
        self.started = threading.Event()
        self.stop = threading.Event()
        self.restarts = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            count, limit = self.owner.tokenize(self.model, self.prompt)
            max_tokens = max(1, limit - count)  # as long as the context allows: it must outlive the wave
            while not self.stop.is_set():
                if self._one(max_tokens) and not self.stop.is_set():
                    self.restarts += 1
        except BaseException as exc:  # reported by wait_started / ran_throughout in the caller's thread
            self.error = exc
        finally:
            self.started.set()

    def _one(self, max_tokens: int) -> bool:
        """Stream one request until it finishes (True) or we are told to stop (False)."""
        stream = _call(self.owner, lambda: self.owner._client.completions.create(
            model=self.model, prompt=self.prompt, max_tokens=max_tokens, temperature=0, stream=True,
            extra_body={"ignore_eos": True}), model=self.model)
        try:
            for chunk in stream:
                self.started.set()
                if any(choice.finish_reason for choice in chunk.choices):
                    return True
                if self.stop.is_set():
                    return False
            return True
        finally:
            stream.close()

    def wait_started(self, timeout: float) -> None:
        if not self.started.wait(timeout):
            raise EngineError(f"companion request on '{self.model}' produced no token in {timeout:.0f} s",
                              code="engine_timeout")
        if self.error is not None:
            raise self.error

    def ran_throughout(self) -> bool:
        return self.error is None and self.is_alive() and self.restarts == 0


def parse_choice(choice: dict[str, Any]) -> Generation:
    """A completion choice (``return_tokens_as_token_ids``) as a ``Generation``. Raises ``EngineError`` when the
    engine did not return logprobs in that form."""
    try:
        lp = choice["logprobs"]
        tokens = [_token_id(t) for t in lp["tokens"]]
        tops = [{_token_id(k): float(v) for k, v in (top or {}).items()} for top in lp["top_logprobs"]]
        for token, top, own in zip(tokens, tops, lp["token_logprobs"]):
            top.setdefault(token, float(own))
        prompt_ids = choice.get("prompt_token_ids")
        return Generation(tokens, tops, choice.get("text") or "", list(prompt_ids) if prompt_ids else None)
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"the engine's answer has no token-id logprobs ({exc!r}): is it vLLM?",
                          code="engine_error") from None


def _token_id(token: str) -> int:
    if not token.startswith(_TOKEN_ID):
        raise ValueError(f"token {token!r} is not in token_id:N form")
    return int(token[len(_TOKEN_ID):])


def _call(owner: Consolidated, fn: Callable[[], T], *, model: str | None = None) -> T:
    """Run one OpenAI-client call, turning its errors into typed ones (exit 3 engine, exit 2 model not served)."""
    try:
        return fn()
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise EngineError(f"cannot reach the engine at {owner.url}: {exc}", code="engine_unreachable") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise EngineError(f"the engine at {owner.url} refused the credentials (HTTP {exc.status_code}): set "
                          "TENANTSERVE_ADMIN_TOKEN to the engine's admin token", code="engine_refused") from None
    except openai.NotFoundError:
        raise AdapterError(f"the engine at {owner.url} does not serve '{model}'", code="model_not_served") from None
    except openai.BadRequestError as exc:  # e.g. a prompt longer than the engine's context: the prompt set's fault
        raise PromptsError(f"the engine refused a request for '{model}' (HTTP 400): {exc.message}",
                           code="request_refused") from None
    except openai.APIStatusError as exc:
        raise EngineError(f"the engine answered HTTP {exc.status_code}: {exc.message}", code="engine_error") from None
