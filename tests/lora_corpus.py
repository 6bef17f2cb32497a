"""Build tiny Llama-shaped bases and PEFT LoRA adapters on disk, good and bad, for admission tests.

Real safetensors files with the tensor names and shapes of a Llama checkpoint and of PEFT's adapter format, written
with numpy: the checks under test read exactly these files (no engine needed to refuse them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def make_base(path: Path, *, hidden: int = 32, layers: int = 2, vocab: int = 64, inter: int = 48, seed: int = 0,
              tied: bool = True, shards: int = 1) -> Path:
    """A Llama-architecture base directory: config, safetensors (optionally sharded), tokenizer files."""
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), np.float32),
                                "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ATTN:
            t[f"{p}self_attn.{m}.weight"] = rng.standard_normal((hidden, hidden), np.float32)
        t[f"{p}mlp.gate_proj.weight"] = rng.standard_normal((inter, hidden), np.float32)
        t[f"{p}mlp.up_proj.weight"] = rng.standard_normal((inter, hidden), np.float32)
        t[f"{p}mlp.down_proj.weight"] = rng.standard_normal((hidden, inter), np.float32)
        t[f"{p}input_layernorm.weight"] = np.ones(hidden, np.float32)
        t[f"{p}post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    if not tied:
        t["lm_head.weight"] = rng.standard_normal((vocab, hidden), np.float32)
    path.mkdir(parents=True, exist_ok=True)
    names = sorted(t)
    for k in range(shards):
        part = {n: t[n] for n in names[k::shards]}
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(path / fname))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "num_hidden_layers": layers, "vocab_size": vocab, "intermediate_size": inter,
              "num_attention_heads": 1, "num_key_value_heads": 1, "tie_word_embeddings": tied,
              "max_position_embeddings": 64, "torch_dtype": "float32"}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (path / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    (path / "README.md").write_text("not part of the model\n")
    return path


def make_adapter(path: Path, *, rank: int = 8, hidden: int = 32, layers: int = 2, targets: tuple[str, ...] = ("q_proj",
                 "v_proj"), weight_targets: tuple[str, ...] | None = None, config: dict | None = None,
                 extra_tensors: dict[str, tuple[int, ...]] | None = None, seed: int = 1, inter: int = 48,
                 module_ranks: dict[str, int] | None = None, adapter_segment: str | None = None) -> Path:
    """A PEFT LoRA adapter directory for a base of ``hidden`` x ``layers`` (attention and MLP modules).

    ``module_ranks``: tensor rank by module suffix (``q_proj``) or full name (``model.layers.0.self_attn.q_proj``),
    whatever the config says. ``adapter_segment``: write names the way ``model.state_dict()`` does
    (``.lora_A.default.weight``) instead of ``save_pretrained``.
    """
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {}
    seg = f".{adapter_segment}" if adapter_segment else ""
    for i in range(layers):
        for m in weight_targets if weight_targets is not None else targets:
            module = f"model.layers.{i}.{'mlp' if m in MLP else 'self_attn'}.{m}"
            r = (module_ranks or {}).get(module, (module_ranks or {}).get(m, rank))
            fan_in = inter if m == "down_proj" else hidden
            fan_out = inter if m in ("gate_proj", "up_proj") else hidden
            p = f"base_model.model.{module}"
            t[f"{p}.lora_A{seg}.weight"] = rng.standard_normal((r, fan_in), np.float32)
            t[f"{p}.lora_B{seg}.weight"] = rng.standard_normal((fan_out, r), np.float32)
    for name, shape in (extra_tensors or {}).items():
        t[name] = rng.standard_normal(shape, np.float32)
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets), "bias": "none",
           "base_model_name_or_path": "tiny-base", "task_type": "CAUSAL_LM", "modules_to_save": None}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return path


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_byte(path: Path, offset: int = -1) -> None:
    """Change one byte, keeping the size (the subtle tamper: same size, other content)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
