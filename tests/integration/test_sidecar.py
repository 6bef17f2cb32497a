"""The sidecar against a real vLLM engine of its own (this module mutates, kills and restarts it).

One engine + one sidecar for the whole module (engine start costs 30-90 s here); the tests run in file order and
each leaves the stack converged for the next.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.store import AdapterStore
from tenantserve.demo import embedded
from tenantserve.registry.schema import Registry
from tenantserve.vllm_plugin.metrics import per_label
from tests.conftest import EMBEDDED
from tests.integration.engines import RunningEngine, copy_registry, start_engine
from tests.sidecar.serving import SidecarThread
from tests.waiting import wait_for

SLOW_STEPS = Path(__file__).parent / "slow_steps"


@dataclass
class Stack:
    engine: RunningEngine
    sidecar: SidecarThread
    adapters: Path  # the sidecar's adapters root: tenant T onboards from adapters/T/
    base_fingerprint: str
    slow_flag: Path  # while it exists, the engine's steps are slow (tests/integration/slow_steps)

    def body(self, name: str, path: Path | str, **extra: object) -> dict:
        """An onboarding request that declares the base the adapter was trained on (the embedded base)."""
        return {"name": name, "path": str(path), "base_fingerprint": self.base_fingerprint, **extra}

    def adapter_copy(self, name: str, *, source: str = "sql", tenant: str = "hooli", **config: object) -> Path:
        """A fresh directory in the tenant's folder with the embedded adapter's files (optionally with a changed
        adapter_config.json)."""
        dest = self.adapters / tenant / name
        if not dest.exists():
            shutil.copytree(EMBEDDED / "adapters" / source, dest)
        if config:
            cfg = json.loads((dest / "adapter_config.json").read_text())
            cfg.update(config)
            (dest / "adapter_config.json").write_text(json.dumps(cfg))
        return dest

    def served(self) -> dict[str, str]:
        data = httpx.get(f"{self.engine.url}/v1/models", timeout=10).json()["data"]
        return {m["id"]: m["root"] for m in data if m.get("parent")}

    def registered(self) -> set[str]:
        return {a.name for _, a in Registry.load(self.engine.registry_path, check_paths=False).adapters()}

    def complete(self, model: str, prompt: str = embedded.SQL_PROMPT, max_tokens: int = 24) -> str:
        resp = self.engine.openai().completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                                       temperature=0)
        return resp.choices[0].text.strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("sidecar-stack")
    registry = copy_registry(tmp / "adapters.yaml")
    slow = tmp / "slow-steps"  # exists -> 20 ms per scheduler step (tests/integration/slow_steps)
    env = {"VLLM_SERVER_DEV_MODE": "1",  # /pause, /resume
           "TENANTSERVE_TEST_SLOW_STEPS": str(slow),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SLOW_STEPS), os.environ.get("PYTHONPATH")]))}
    engine = start_engine(registry, tmp / "engine.log", extra_env=env)
    sidecar = SidecarThread(registry, engine.url, reconcile=True, reconcile_interval=3.0, watch_interval=0.5,
                            drain_timeout=120.0, adapters_root=tmp / "adapters")
    try:
        sidecar.start()
        (tmp / "adapters").mkdir()
        yield Stack(engine, sidecar, tmp / "adapters", fingerprint(engine.registry.base_path).value, slow)
    finally:
        sidecar.stop()
        engine.stop()


def _engine_counts(stack: Stack, name: str) -> dict[str, float]:
    return per_label(httpx.get(f"{stack.engine.url}/metrics", timeout=10).text, f"tenantserve_lora_{name}_total")


def test_onboard_at_runtime_and_serve_through_openai(stack: Stack) -> None:
    pid = stack.engine.process.pid
    path = stack.adapter_copy("hooli-sql")
    other_before = {n: _engine_counts(stack, n).get("other", 0.0) for n in ("disk_loads", "slot_hits")}
    with stack.sidecar.client() as c:
        assert c.post("/admin/tenants", json={"id": "hooli"}).status_code == 201
        resp = c.post("/admin/tenants/hooli/adapters", json=stack.body("hooli-sql@v1", "hooli-sql"))  # relative
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["state"] == "loaded" and body["warmup_seconds"] > 0 and body["load_seconds"] > 0
        again = c.post("/admin/tenants/hooli/adapters", json=stack.body("hooli-sql@v1", path))
        assert again.status_code == 200  # idempotent repeat
    assert stack.complete("hooli-sql@v1") == embedded.SQL_ON_SQL
    assert stack.engine.process.pid == pid and stack.engine.process.running()  # no restart
    store = AdapterStore.default()  # served from the admitted copy, never from the tenant's folder
    assert "hooli-sql@v1" in stack.registered() and stack.served()["hooli-sql@v1"] == str(store.path_for(
        store.digest(path)))
    assert stack.sidecar.sample("tenantserve_adapter_warmup_seconds_count") >= 1
    assert stack.sidecar.sample("tenantserve_adapters", state="loaded") == 4
    # The registry entry is written before the load: the engine counts the load and the warm-up under the name.
    assert _engine_counts(stack, "disk_loads")["hooli-sql@v1"] >= 1
    assert _engine_counts(stack, "slot_hits")["hooli-sql@v1"] >= 1
    assert {n: _engine_counts(stack, n).get("other", 0.0) for n in ("disk_loads", "slot_hits")} == other_before


def test_bad_onboarding_requests_get_their_4xx_and_change_nothing(stack: Stack) -> None:
    before_file, before_served = stack.engine.registry_path.read_text(), stack.served()
    big = stack.adapter_copy("too-big", r=16)
    no_targets = stack.adapter_copy("no-targets", target_modules=["no_such_proj"])
    steal = stack.adapter_copy("steal")  # hooli's own config, another tenant's (globex's pirate) weights by a link
    (steal / "adapter_model.safetensors").unlink()
    (steal / "adapter_model.safetensors").symlink_to(EMBEDDED / "adapters" / "pirate" / "adapter_model.safetensors")
    cases = [
        (stack.body("steal", steal), 400, "path_escape"),
        (stack.body("steal", "steal"), 400, "path_escape"),
        (stack.body("pirate-copy", EMBEDDED / "adapters" / "pirate"), 400, "path_escape"),
        (stack.body("pirate-copy", "../globex/pirate"), 400, "path_escape"),
        (stack.body("big", big), 400, ("rank_too_high", "shape_mismatch")),  # config r=16 over rank-8 weights
        (stack.body("ghost", "nope"), 400, "path_missing"),
        (stack.body("notarget", no_targets), 400, None),
        (stack.body("sql", stack.adapter_copy("hooli-sql")), 409, "adapter_exists"),
        (stack.body("hooli-sql@v1", big), 409, "adapter_exists"),
        ({"name": "x", "path": str(big), "extra": 1}, 422, "malformed_request"),
        ({"path": str(big)}, 422, "malformed_request"),
    ]
    with stack.sidecar.client() as c:
        for body, status, code in cases:
            resp = c.post("/admin/tenants/hooli/adapters", json=body)
            assert resp.status_code == status, (body, resp.text)
            if code:
                assert resp.json()["error"]["code"] in ((code,) if isinstance(code, str) else code), resp.text
        assert c.post("/admin/tenants/nobody/adapters", json={"name": "y", "path": str(big)}).status_code == 404
    assert stack.engine.registry_path.read_text() == before_file
    assert stack.served() == before_served


STREAMS = 4
STREAM_TOKENS = 230  # max_model_len 256


def _running(stack: Stack) -> float:
    """Requests running in the engine, from its last scheduler step (vLLM's own gauge)."""
    text = httpx.get(f"{stack.engine.url}/metrics", timeout=10).text
    return sum(per_label(text, "vllm:num_requests_running", "engine").values())


def test_versioned_swap_and_offboard_while_streaming(stack: Stack) -> None:
    """v2 is added, then v1 removed while v1 streams are mid-generation: new v1 requests get 404 at once, the removal
    waits for the streams (drain), they complete, v2 serves. With the engine's steps slowed (test-only), the
    scheduler is paused (vLLM's dev route) once the engine reports the streams running, and checked to still hold
    them, so they are generating while the removal starts."""
    with stack.sidecar.client() as c:
        v2 = c.post("/admin/tenants/hooli/adapters", json=stack.body("hooli-sql@v2", stack.adapter_copy("hooli-sql-v2")))
        assert v2.status_code == 201, v2.text
    client = stack.engine.openai()
    chunks = [0] * STREAMS
    finished: list[str | None] = []
    generated: list[int] = []
    removal: dict[str, object] = {}

    def streams() -> None:  # one request, STREAMS prompts: they enter the engine together
        for event in client.completions.create(model="hooli-sql@v1", prompt=[embedded.SQL_PROMPT] * STREAMS,
                                               max_tokens=STREAM_TOKENS, temperature=0, stream=True,
                                               stream_options={"include_usage": True},
                                               extra_body={"ignore_eos": True}):
            if event.usage is not None:
                generated.append(event.usage.completion_tokens)
            for choice in event.choices:
                chunks[choice.index] += 1
                if choice.finish_reason:
                    finished.append(choice.finish_reason)

    def remove() -> None:
        with stack.sidecar.client() as c:
            removal["response"] = c.delete("/admin/tenants/hooli/adapters/hooli-sql@v1")

    pause = {"mode": "keep"}
    reader = threading.Thread(target=streams)
    stack.slow_flag.touch()  # 20 ms a step: the streams take seconds, not a fraction of one
    try:
        reader.start()
        wait_for(lambda: _running(stack) >= STREAMS, 60, "the streams to run")  # the engine's view, not the client's
        assert httpx.post(f"{stack.engine.url}/pause", params=pause, timeout=60).status_code == 200
    finally:
        stack.slow_flag.unlink()
    try:
        assert _running(stack) >= STREAMS, f"the streams finished before the pause ({STREAM_TOKENS} tokens)"
        remover = threading.Thread(target=remove)
        remover.start()
        wait_for(lambda: "hooli-sql@v1" not in stack.served(), 30, "v1 to leave /v1/models")
        with pytest.raises(openai.NotFoundError):  # new requests are refused at once, while v1's streams still run
            stack.complete("hooli-sql@v1")
        remover.join(2.0)
        answer = getattr(removal.get("response"), "text", None)
        assert remover.is_alive(), f"the removal did not wait for the v1 streams: {answer}, {chunks}"
    finally:
        assert httpx.post(f"{stack.engine.url}/resume", timeout=60).status_code == 200
    remover.join(120)
    gone = removal["response"]
    assert gone.status_code == 200, gone.text  # type: ignore[attr-defined]
    assert gone.json()["unloaded"] and gone.json()["drained"]  # type: ignore[attr-defined]
    reader.join(120)
    # Every stream generated all its tokens, as many events (a loaded server may put several tokens in one event).
    assert finished == ["length"] * STREAMS and generated == [STREAMS * STREAM_TOKENS] and min(chunks) >= 10, chunks
    with pytest.raises(openai.NotFoundError):
        stack.complete("hooli-sql@v1")
    assert stack.complete("hooli-sql@v2") == embedded.SQL_ON_SQL
    assert "hooli-sql@v1" not in stack.registered() and "hooli-sql@v1" not in stack.served()


def test_hand_edited_registry_converges(stack: Stack) -> None:
    path = stack.engine.registry_path
    data = yaml.safe_load(path.read_text())
    acme = next(t for t in data["tenants"] if t["id"] == "acme")
    acme["adapters"].append({"name": "edited", "path": str(stack.adapter_copy("edited", source="pirate")),
                             "base_fingerprint": stack.base_fingerprint})
    data["tenants"] = [t for t in data["tenants"] if t["id"] != "globex"]  # drops 'pirate'
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    wait_for(lambda: "edited" in stack.served() and "pirate" not in stack.served(), 20, "the engine to converge")
    assert stack.complete("edited", embedded.FRUIT_PROMPT)
    with pytest.raises(openai.NotFoundError):
        stack.complete("pirate")


def test_failed_adapter_is_retried_with_backoff_until_it_loads(stack: Stack) -> None:
    path = stack.engine.registry_path
    later = stack.adapters / "arrives-later"
    data = yaml.safe_load(path.read_text())
    data["tenants"][0]["adapters"].append({"name": "later", "path": str(later),
                                           "base_fingerprint": stack.base_fingerprint})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with stack.sidecar.client() as c:
        def status() -> dict:
            return next((a for a in c.get("/admin/adapters").json() if a["name"] == "later"), {})

        wait_for(lambda: status().get("attempts", 0) >= 2, 20, "two failed attempts")
        failed = status()
        assert failed["state"] == "failed" and failed["error_code"] == "path_missing"
        shutil.copytree(EMBEDDED / "adapters" / "french", later)
        wait_for(lambda: status().get("state") == "loaded", 20, "the retry to succeed")
        assert c.get("/admin/reconcile").json()["engine_healthy"] is True
    assert stack.sidecar.sample("tenantserve_reconcile_errors_total") >= 2


def test_engine_kill9_and_restart_brings_every_adapter_back(stack: Stack) -> None:
    """The engine restarts with its original command line (the registry at launch): runtime adapters are gone
    from it, and the reconciler loads them again without anyone acting."""
    registered = stack.registered()
    assert {"hooli-sql@v2", "edited", "later"} <= registered
    stack.engine.process.kill()
    with stack.sidecar.client() as c:
        resp = c.post("/admin/tenants/hooli/adapters",
                      json=stack.body("while-down", stack.adapter_copy("while-down")))
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "engine_error"
    assert "while-down" not in stack.registered()
    stack.engine.process.start()
    stack.engine.process.wait_ready(420)
    took = wait_for(lambda: set(stack.served()) == registered, 30, "every registered adapter to be served again")
    assert took < 10
    assert stack.complete("hooli-sql@v2") == embedded.SQL_ON_SQL
    assert stack.sidecar.sample("tenantserve_reconcile_runs_total", result="engine_down") >= 1


def test_remove_tenant_offboards_all_its_adapters(stack: Stack) -> None:
    with stack.sidecar.client() as c:
        resp = c.delete("/admin/tenants/hooli")
        assert resp.status_code == 200 and [r["name"] for r in resp.json()] == ["hooli-sql@v2"]
        assert "hooli" not in [t["id"] for t in c.get("/admin/tenants").json()]
    assert "hooli-sql@v2" not in stack.served() and "hooli-sql@v2" not in stack.registered()
