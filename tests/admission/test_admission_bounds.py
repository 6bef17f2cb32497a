"""Hostile adapter folders: every fault is an ``AdapterError`` with its reason, read with bounded memory and time.

NUL bytes and unusable paths, FIFOs and devices in place of files, huge configs, stamps and safetensors headers,
JSON nested too deep; then Hypothesis fuzzes names, paths, config values of every JSON type and tensor headers:
nothing but a ``TenantserveError`` may leave ``admit()``, and what it admits vLLM's own validation accepts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tenantserve.admission.adapter_dir import CONFIG_LIMIT, STAMP_NAME
from tenantserve.admission.admit import Admission, BaseFacts, EngineLora, admit
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.weights import ADAPTER_HEADER_LIMIT
from tenantserve.errors import AdapterError, TenantserveError
from tenantserve.registry.schema import NAME_PATTERN, AdapterSpec, Registry
from tests.lora_corpus import make_adapter, make_base

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


class World:
    """A base, its facts, a registry rooted beside it; ``admit`` of any spec against a rank-8 engine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = FingerprintCache(root / "cache").load()
        self.facts = BaseFacts.read(make_base(root / "base"), cache=self.cache)
        data = {"base": {"name": "tiny", "path": "base"}, "engine": {"max_loras": 2}, "tenants": []}
        self.registry = Registry.parse(json.dumps(data), root=root)

    def admit(self, name: str = "a", path: str | Path = "adapters/a") -> Admission:
        spec = AdapterSpec.model_construct(name=name, path=Path(path) if isinstance(path, str) else path,
                                           base_fingerprint=self.facts.fingerprint.value)
        return admit(self.registry, spec, base=self.facts, cache=self.cache,
                     lora_config=EngineLora(max_lora_rank=8, max_loras=2))

    def refusal(self, name: str = "a", path: str | Path = "adapters/a") -> AdapterError:
        with pytest.raises(AdapterError) as info:
            self.admit(name, path)
        assert "\n" not in str(info.value)
        return info.value


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = World(tmp_path_factory.mktemp("bounds"))
    make_adapter(w.root / "adapters" / "a")
    w.admit()  # the good adapter passes (and vLLM is imported outside any measurement)
    return w


@pytest.fixture
def adapter(world: World) -> Path:
    """A fresh good adapter at adapters/a (a FIFO left by a failed test would block a plain rewrite)."""
    shutil.rmtree(world.root / "adapters" / "a", ignore_errors=True)
    return make_adapter(world.root / "adapters" / "a")


def test_nul_bytes_and_unusable_paths_have_a_reason(world: World, adapter: Path) -> None:
    assert world.refusal(path="adapters/a\x00b").code == "path_invalid"
    assert world.refusal(path="a" * 5000).code == "path_invalid"  # ENAMETOOLONG
    os.symlink("loop", world.root / "loop")
    assert world.refusal(path="loop").code == "path_invalid"  # ELOOP
    assert world.refusal(name="a\x00b").code == "name_invalid"
    assert world.refusal(path="adapters/a/adapter_config.json").code == "path_missing"  # a file, not a directory
    (world.root / "loop").unlink()


def test_a_fifo_or_a_device_in_place_of_a_file_is_refused_without_blocking(world: World, adapter: Path) -> None:
    cfg = adapter / "adapter_config.json"
    cfg.unlink()
    os.mkfifo(cfg)  # an open() for reading would wait forever for a writer
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(_outcome(world)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "admission blocked on a FIFO"
    assert result == ["file_not_regular"]
    cfg.unlink()
    os.symlink("/dev/zero", cfg)  # endless
    assert world.refusal().code == "file_not_regular"
    cfg.unlink()
    make_adapter(adapter)
    (adapter / "adapter_model.safetensors").unlink()
    os.mkfifo(adapter / "adapter_model.safetensors")
    assert world.refusal().code == "file_not_regular"


def test_a_huge_config_is_refused_unread(world: World, adapter: Path) -> None:
    cfg = adapter / "adapter_config.json"
    good = cfg.read_text()
    with cfg.open("r+b") as fh:  # 300 MiB, sparse: a real file of that size, no disk spent
        fh.truncate(300 << 20)
    tracemalloc.start()
    try:
        err = world.refusal()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == "config_too_large" and str(CONFIG_LIMIT) in str(err)
    assert peak < 1 << 20, peak  # nothing of it was read
    cfg.write_text(good[:-2] + ', "padding": "' + "x" * CONFIG_LIMIT + '"}')  # just over, and valid JSON
    assert world.refusal().code == "config_too_large"
    cfg.write_text("[" * 200_000 + "]" * 200_000)  # 400 KB, nested beyond the parser's recursion limit
    assert world.refusal().code == "config_invalid"


def test_a_huge_stamp_and_a_huge_safetensors_header_have_their_own_codes(world: World, adapter: Path) -> None:
    (adapter / STAMP_NAME).write_text(json.dumps({"base_fingerprint": world.facts.fingerprint.value,
                                                  "padding": "x" * (100 << 10)}))
    assert world.refusal().code == "stamp_too_large"
    (adapter / STAMP_NAME).unlink()
    weights = adapter / "adapter_model.safetensors"
    n = ADAPTER_HEADER_LIMIT + 1
    with weights.open("wb") as fh:
        fh.write(struct.pack("<Q", n))
        fh.truncate(8 + n + 64)
    tracemalloc.start()
    try:
        err = world.refusal()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == "weights_header_too_large" and peak < 1 << 20, (err, peak)


# -- fuzzing ---------------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=12,
)
KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "peft_type", "bias", "lora_bias",
        "use_dora", "use_rslora", "init_lora_weights", "modules_to_save", "layers_to_transform", "layers_pattern",
        "exclude_modules", "alora_invocation_tokens", "layer_replication", "use_bdlora", "use_qalora",
        "base_model_name_or_path", "task_type", "fan_in_fan_out")
PLAUSIBLE = {
    "r": st.sampled_from([0, 1, 4, 8, 16, -1, 2**64, True]),
    "target_modules": st.sampled_from([["q_proj"], ["q_proj", "v_proj"], "all-linear", ".*q_proj", "(", [],
                                       ["k_proj"], "ALL-LINEAR"]),
    "rank_pattern": st.dictionaries(st.sampled_from(["q_proj", "v_proj", "layers.0.self_attn.q_proj", "(", "x*",
                                                     ".*"]), st.sampled_from([1, 4, 8, 16, 0, -2]), max_size=3),
    "layers_to_transform": st.sampled_from([0, 1, [0], [0, 1], [], None, "0"]),
}


def _config_values() -> st.SearchStrategy[dict]:
    plausible = st.fixed_dictionaries({}, optional=PLAUSIBLE)
    wild = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=2)
    return st.tuples(plausible, wild).map(lambda pw: {**pw[0], **pw[1]})


@FUZZ
@given(changes=_config_values(), drop=st.sets(st.sampled_from(("r", "lora_alpha", "target_modules", "peft_type"))))
def test_fuzzed_configs_give_a_reason_and_never_more_than_vllm_allows(world: World, adapter: Path, changes: dict,
                                                                      drop: set) -> None:
    d = adapter
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    cfg.update(changes)
    for key in drop:
        cfg.pop(key, None)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    try:
        world.admit()
    except TenantserveError as exc:
        event(exc.code)
        return
    event("admitted")
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    PEFTHelper.from_local_dir(str(d), 64).validate_legal(LoRAConfig(max_lora_rank=8, max_loras=2))  # must not raise


@FUZZ
@given(name=st.from_regex(NAME_PATTERN, fullmatch=True) | st.text(max_size=200),
       path=st.sampled_from(["adapters/a", "adapters/./a", "adapters/../adapters/a", "/adapters/a"])
       | st.text(max_size=300) | st.text(max_size=20).map(lambda t: "adapters/" + t))
def test_fuzzed_names_and_paths_give_a_reason(world: World, adapter: Path, name: str, path: str) -> None:
    try:
        world.admit(name=name, path=path)
    except TenantserveError as exc:
        event(exc.code)


TENSOR = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "X9"]) | JSON,
    "shape": st.lists(st.integers(min_value=-2, max_value=2**64), max_size=4) | JSON,
    "data_offsets": st.lists(st.integers(min_value=-2, max_value=2**64), min_size=0, max_size=3) | JSON,
})
NAMES = st.sampled_from([
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    "base_model.model.model.layers.9.self_attn.v_proj.lora_A.weight",
    "base_model.model.model.embed_tokens.lora_embedding_A", "__metadata__", "x.lora_A.default.weight",
    "base_model.model.lm_head.lora_B.weight", "",
]) | st.text(max_size=30)


@st.composite
def _well_formed(draw: st.DrawFn) -> tuple[dict, bytes]:
    """A consistent header (offsets add up) of LoRA-like names and small shapes: the shape checks get exercised."""
    header, offset = {}, 0
    for name in draw(st.lists(NAMES, max_size=6, unique=True)):
        shape = draw(st.lists(st.integers(0, 64), min_size=0, max_size=3))
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return header, bytes(offset)


@FUZZ
@given(case=_well_formed())
def test_fuzzed_well_formed_headers_give_a_reason(world: World, adapter: Path, case: tuple[dict, bytes]) -> None:
    header, data = case
    raw = json.dumps(header).encode()
    (adapter / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    try:
        world.admit()
        event("admitted")
    except TenantserveError as exc:
        event(exc.code)


@FUZZ
@given(header=st.dictionaries(NAMES, TENSOR | JSON, max_size=6) | JSON, declared=st.integers(0, 2**64 - 1) | st.none(),
       tail=st.binary(max_size=2048))
def test_fuzzed_safetensors_headers_give_a_reason(world: World, adapter: Path, header: object,
                                                  declared: int | None, tail: bytes) -> None:
    d = adapter
    raw = json.dumps(header).encode()
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw) if declared is None else declared)
                                                  + raw + tail)
    try:
        world.admit()
        event("admitted")
    except TenantserveError as exc:
        event(exc.code)


def _outcome(world: World) -> str:
    try:
        world.admit()
    except AdapterError as exc:
        return exc.code
    return "admitted"
