"""What was admitted is what is served, and what the engine caches follows the content (issue 10, items 4 and 6).

One real engine whose three startup adapters live in tenant-writable folders (``adapters/<tenant>/<name>``), with
``max_cpu_loras == max_loras == 2``: cycling three adapters evicts each from the host cache, so vLLM reads it from
disk again (counted by the plugin's ``tenantserve_lora_disk_loads_total``). Without the adapter store those reads
picked up whatever the tenant had written since admission. Tests run in file order; each restores what it changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.store import AdapterStore
from tenantserve.demo import embedded
from tenantserve.registry.schema import Registry
from tenantserve.vllm_plugin.metrics import per_label
from tests.conftest import EMBEDDED
from tests.integration.engines import RunningEngine, copy_registry, start_engine
from tests.sidecar.serving import SidecarThread
from tests.waiting import wait_for

ORIGINAL = {"sql": EMBEDDED / "adapters" / "sql", "pirate": EMBEDDED / "adapters" / "pirate",
            "french": EMBEDDED / "adapters" / "french"}
#: More than one CPU KV block (128 tokens) of prompt, so its first block can come from the prefix cache.
LONG_PROMPT = " ".join(["Table users(id,name). Query all names:"] * 14)


@dataclass
class Stack:
    engine: RunningEngine
    root: Path  # the adapters root: <root>/<tenant>/<adapter>
    store: AdapterStore
    base_fingerprint: str
    sidecar: SidecarThread | None = None

    def folder(self, name: str) -> Path:
        owner = {"sql": "acme", "pirate": "globex", "french": "initech"}.get(name, "acme")
        return self.root / owner / name

    def served(self) -> dict[str, str]:
        data = httpx.get(f"{self.engine.url}/v1/models", timeout=10).json()["data"]
        return {m["id"]: m["root"] for m in data if m.get("parent")}

    def complete(self, model: str, prompt: str = embedded.SQL_PROMPT, max_tokens: int = 12) -> str:
        resp = self.engine.openai().completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                                       temperature=0)
        return resp.choices[0].text

    def top_logprobs(self, model: str) -> tuple[dict[str, float], int, int]:
        """Top-5 logprobs of the first token after LONG_PROMPT, the prompt's length and its cached tokens."""
        resp = self.engine.openai().completions.create(model=model, prompt=LONG_PROMPT, max_tokens=1, temperature=0,
                                                       logprobs=5)
        details = resp.usage.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details is not None else 0
        return dict(resp.choices[0].logprobs.top_logprobs[0]), resp.usage.prompt_tokens, cached

    def disk_loads(self, name: str) -> float:
        text = httpx.get(f"{self.engine.url}/metrics", timeout=10).text
        return per_label(text, "tenantserve_lora_disk_loads_total").get(name, 0.0)

    def board(self) -> dict[str, dict]:
        assert self.sidecar is not None
        with self.sidecar.client() as c:
            return {a["name"]: a for a in c.get("/admin/adapters").json()}


def place(files_of: Path, folder: Path, **config: object) -> Path:
    """Put an adapter's files into a tenant's folder (as the tenant would: plain writes over what is there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((files_of / name).read_bytes())
    if config:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg.update(config)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("served-content")
    path = copy_registry(tmp / "adapters.yaml", max_loras=2, max_cpu_loras=2, max_lora_rank=8,
                         extra_args=["--enable-prompt-tokens-details"])
    registry = Registry.load(path)
    root = tmp / "adapters"
    for tenant, adapter in registry.adapters():
        adapter.path = place(ORIGINAL[adapter.name], root / tenant.id / adapter.name)
    registry.save(path)
    engine = start_engine(path, tmp / "engine.log")
    running = Stack(engine, root, AdapterStore.default(), fingerprint(registry.base_path).value)
    try:
        yield running
    finally:
        if running.sidecar is not None:
            running.sidecar.stop()
        engine.stop()


def test_startup_adapters_serve_the_admitted_copy_whatever_the_folder_holds_now(stack: Stack) -> None:
    served = stack.served()
    for name in ORIGINAL:
        assert Path(served[name]).parent == stack.store.root and Path(served[name]).name.startswith("sha256-")
    expected = {name: stack.complete(name) for name in ORIGINAL}
    assert expected["sql"].strip() == embedded.SQL_ON_SQL and expected["pirate"] != expected["sql"]
    loads = stack.disk_loads("sql")
    place(ORIGINAL["pirate"], stack.folder("sql"))  # another adapter's weights into sql's folder
    place(ORIGINAL["french"], stack.folder("french"), r=16)  # a rank the slots (8) cannot hold
    for _ in range(2):
        for name in ("pirate", "french", "sql"):  # three adapters, two host-cache places: each is read again
            assert stack.complete(name) == expected[name], name
    assert stack.disk_loads("sql") > loads, "sql never left the host cache: the test proved nothing"
    assert stack.engine.process.running()


def test_the_running_sidecar_shows_changed_folders_failed_and_restoring_them_recovers(stack: Stack) -> None:
    stack.sidecar = SidecarThread(stack.engine.registry_path, stack.engine.url, reconcile=True,
                                  reconcile_interval=1.0, watch_interval=0.5, adapters_root=stack.root).start()
    wait_for(lambda: {stack.board().get(n, {}).get("error_code") for n in ("sql", "french")} == {"adapter_changed"},
             20, "sql and french to show adapter_changed")
    board = stack.board()
    assert board["sql"]["state"] == board["french"]["state"] == "failed"
    assert str(stack.folder("sql")) in board["sql"]["last_error"]
    assert board["pirate"]["state"] == "loaded"
    wait_for(lambda: "sql" not in stack.served() and "french" not in stack.served(), 20, "the changed to be unloaded")
    with pytest.raises(openai.NotFoundError):
        stack.complete("sql")
    assert stack.complete("pirate")  # the other tenant is served throughout
    place(ORIGINAL["sql"], stack.folder("sql"))
    place(ORIGINAL["french"], stack.folder("french"))
    wait_for(lambda: all(stack.board()[n]["state"] == "loaded" for n in ORIGINAL), 30, "restored folders to load")
    assert stack.complete("sql").strip() == embedded.SQL_ON_SQL
    assert stack.engine.process.running()


def test_a_runtime_adapter_pins_its_content_and_a_swap_is_noticed_within_an_interval(stack: Stack) -> None:
    folder = place(ORIGINAL["sql"], stack.folder("hot"))
    with stack.sidecar.client() as c:  # type: ignore[union-attr]
        resp = c.post("/admin/tenants/acme/adapters",
                      json={"name": "hot", "path": "hot", "base_fingerprint": stack.base_fingerprint})
        assert resp.status_code == 201, resp.text
    pinned = Registry.load(stack.engine.registry_path).find_adapter("hot")[1].fingerprint  # type: ignore[index]
    assert pinned == stack.store.digest(folder)
    assert stack.served()["hot"] == str(stack.store.path_for(pinned))
    answer = stack.complete("hot")

    place(ORIGINAL["sql"], folder, r=16)  # rank 16 on an engine with max_lora_rank 8
    took = wait_for(lambda: stack.board()["hot"].get("error_code") == "adapter_changed", 15, "hot to fail")
    assert took < 10, took
    for name in ("pirate", "french", "sql", "hot"):  # no 500, whatever the engine re-reads
        try:
            stack.complete(name)
        except openai.NotFoundError:
            assert name == "hot"
    assert stack.engine.process.running() and stack.complete("sql").strip() == embedded.SQL_ON_SQL

    shutil.rmtree(folder)
    wait_for(lambda: stack.board()["hot"].get("error_code") == "path_missing", 15, "hot to show path_missing")
    place(ORIGINAL["sql"], folder)
    wait_for(lambda: stack.board()["hot"]["state"] == "loaded", 30, "hot to come back")
    assert stack.complete("hot") == answer


def test_readding_an_adapter_with_new_files_does_not_reuse_the_old_prefix_cache(stack: Stack) -> None:
    """Remove ``hot``, replace its files, add it again with the same path: logprobs equal a fresh load's."""
    folder = stack.folder("hot")
    with stack.sidecar.client() as c:  # type: ignore[union-attr]
        old, tokens, _ = stack.top_logprobs("hot")  # sql's weights (from the previous test)
        assert 128 < tokens < 250, tokens
        again, _, cached = stack.top_logprobs("hot")
        assert cached >= 128, "the prefix cache is off: this test could not fail"
        assert c.delete("/admin/tenants/acme/adapters/hot").status_code == 200
        place(ORIGINAL["pirate"], folder)
        body = {"name": "hot", "path": "hot", "base_fingerprint": stack.base_fingerprint}
        assert c.post("/admin/tenants/acme/adapters", json=body).status_code == 201
        new, _, cached_new = stack.top_logprobs("hot")
        place(ORIGINAL["pirate"], stack.folder("fresh"))
        body = {"name": "fresh", "path": "fresh", "base_fingerprint": stack.base_fingerprint}
        assert c.post("/admin/tenants/acme/adapters", json=body).status_code == 201
        fresh, _, _ = stack.top_logprobs("fresh")
    assert cached_new == 0
    assert sorted(new) == sorted(fresh) and all(abs(new[t] - fresh[t]) < 1e-3 for t in fresh), (new, fresh)
    assert sorted(old) != sorted(fresh) or any(abs(old[t] - fresh[t]) > 1e-2 for t in fresh), "control: no difference"
    assert sorted(old) == sorted(again)


def test_same_content_keeps_its_copy_and_its_cache(stack: Stack) -> None:
    """The key changes with the content only: the same files under the same name hit the cache after a re-add."""
    with stack.sidecar.client() as c:  # type: ignore[union-attr]
        before = stack.served()["hot"]
        assert c.delete("/admin/tenants/acme/adapters/hot").status_code == 200
        body = {"name": "hot", "path": "hot", "base_fingerprint": stack.base_fingerprint}
        assert c.post("/admin/tenants/acme/adapters", json=body).status_code == 201
    assert stack.served()["hot"] == before
    assert stack.top_logprobs("hot")[2] >= 128
