"""What an adapter directory says about itself: PEFT's ``adapter_config.json``, the base it declares (the stamp file
``tenantserve stamp`` writes), its LoRA tensors and the bytes of its weights."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tenantserve.errors import AdapterError
from tenantserve.registry import atomic_write_text
from tenantserve.weights import TensorInfo

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: Written next to the adapter by ``tenantserve stamp``: the fingerprint of the base it was trained on.
STAMP_NAME = "tenantserve-base.json"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")

#: PEFT features that change what the adapter computes and that vLLM 0.32 does not implement (peft_helper.py).
_UNSUPPORTED_INITS = ("pissa", "olora", "corda", "loftq")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of a PEFT LoRA config that serving depends on."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    peft_type: str
    declared_base: str | None
    modules_to_save: tuple[str, ...]
    raw: dict
    target_regex: str | None = None
    rank_pattern: tuple[tuple[str, int], ...] = ()

    @property
    def max_rank(self) -> int:
        """The largest rank any module uses (``r`` or a ``rank_pattern`` override): what a slot must hold."""
        return max([self.rank, *(r for _, r in self.rank_pattern)])

    def unsupported_features(self) -> list[str]:
        """PEFT options that vLLM cannot serve faithfully, in words."""
        raw, found = self.raw, []
        if raw.get("use_dora"):
            found.append("DoRA (use_dora)")
        if raw.get("lora_bias") or raw.get("bias", "none") not in ("none", None):
            found.append(f"trained biases (bias={raw.get('bias')!r}, lora_bias={raw.get('lora_bias')!r})")
        init = raw.get("init_lora_weights")
        if isinstance(init, str) and init.lower().startswith(_UNSUPPORTED_INITS):
            found.append(f"init_lora_weights={init!r} (modifies the base weights)")
        for key, what in (("alora_invocation_tokens", "Activated LoRA"), ("layer_replication", "layer_replication"),
                          ("use_bdlora", "block-diagonal LoRA"), ("use_qalora", "QALoRA")):
            if raw.get(key):
                found.append(what)
        return found

    def targets(self, module: str) -> bool:
        """Does PEFT apply this config to ``module``? A string is a full regex match, a list matches name suffixes."""
        if self.target_regex is not None:
            return re.fullmatch(self.target_regex, module) is not None
        return any(module == t or module.endswith("." + t) for t in self.target_modules)

    @classmethod
    def read(cls, adapter_dir: Path, *, name: str | None = None) -> AdapterConfig:
        """Read and minimally validate ``adapter_config.json``; raise ``AdapterError`` naming the adapter."""
        label = f"adapter '{name}'" if name else f"adapter at {adapter_dir}"
        path = adapter_dir / CONFIG_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AdapterError(f"{label}: {path} not found", code="config_missing") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AdapterError(f"{label}: cannot read {path}: {exc}", code="config_unreadable") from None
        except json.JSONDecodeError as exc:
            raise AdapterError(
                f"{label}: {path} is not valid JSON (line {exc.lineno}: {exc.msg})", code="config_invalid"
            ) from None
        if not isinstance(raw, dict):
            raise AdapterError(f"{label}: {path} must hold a JSON object", code="config_invalid")
        rank = raw.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise AdapterError(f"{label}: {CONFIG_NAME} has no valid rank 'r' (got {rank!r})", code="config_invalid")
        targets = raw.get("target_modules") or ()
        regex = targets if isinstance(targets, str) else None
        if isinstance(targets, str):
            targets = (targets,)
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise AdapterError(f"{label}: {CONFIG_NAME} target_modules must be a list of names", code="config_invalid")
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise AdapterError(f"{label}: target_modules regex {regex!r}: {exc}", code="config_invalid") from None
        pattern = raw.get("rank_pattern") or {}
        if not isinstance(pattern, dict) or not all(isinstance(v, int) and v > 0 for v in pattern.values()):
            raise AdapterError(f"{label}: rank_pattern must map names to positive ranks", code="config_invalid")
        return cls(
            rank=rank,
            alpha=float(raw.get("lora_alpha", rank)),
            target_modules=tuple(sorted(targets)),
            peft_type=str(raw.get("peft_type", "")),
            declared_base=raw.get("base_model_name_or_path"),
            modules_to_save=tuple(raw.get("modules_to_save") or ()),
            raw=raw,
            target_regex=regex,
            rank_pattern=tuple(sorted(pattern.items())),
        )


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def bytes_on_disk(model_dir: Path) -> int:
    """Bytes of the weight files of a model or adapter directory."""
    return sum(p.stat().st_size for p in weight_files(model_dir))


# -- the declared base ---------------------------------------------------------------------------------------------


def read_stamp(adapter_dir: Path, *, name: str | None = None) -> str | None:
    """The base fingerprint recorded by ``tenantserve stamp``, or None when the adapter has no stamp."""
    path = adapter_dir / STAMP_NAME
    label = f"adapter '{name}'" if name else f"adapter at {adapter_dir}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{label}: cannot read {STAMP_NAME}: {exc}", code="stamp_invalid") from None
    value = data.get("base_fingerprint") if isinstance(data, dict) else None
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise AdapterError(f"{label}: {STAMP_NAME} has no valid base_fingerprint (sha256:<64 hex>)",
                           code="stamp_invalid")
    return value


def write_stamp(adapter_dir: Path, base_fingerprint: str, *, base_name: str | None = None) -> Path:
    """Record the base an adapter was trained on (for training pipelines); written atomically."""
    if not _FINGERPRINT.match(base_fingerprint):
        raise AdapterError(f"not a fingerprint: {base_fingerprint!r}", code="stamp_invalid")
    AdapterConfig.read(adapter_dir)  # only stamp what is an adapter
    data = {
        "base_fingerprint": base_fingerprint,
        "base_name": base_name,
        "stamped_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = adapter_dir / STAMP_NAME
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


# -- LoRA tensors ----------------------------------------------------------------------------------------------------

_LORA_SUFFIX = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight"
                          r"|lora_embedding_A|lora_embedding_B)$")


@dataclass(frozen=True)
class LoraModule:
    """One adapted module of the base: its A and B matrices' shapes (None when missing)."""

    module: str
    a: tuple[int, ...] | None
    b: tuple[int, ...] | None
    embedding: bool


def lora_modules(tensors: dict[str, TensorInfo]) -> tuple[dict[str, LoraModule], list[str]]:
    """Group a checkpoint's tensors by adapted module; also return the tensor names that are not LoRA A/B."""
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    other: list[str] = []
    for name, info in tensors.items():
        if name.endswith((".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")):
            continue  # vLLM ignores these copies of the base's own embeddings
        m = _LORA_SUFFIX.match(name)
        if m is None:
            other.append(name)
            continue
        parts.setdefault(m["module"], {})[m["part"]] = info.shape
    modules = {
        mod: LoraModule(
            mod,
            p.get("lora_A.weight") or p.get("lora_embedding_A"),
            p.get("lora_B.weight") or p.get("lora_embedding_B"),
            embedding="lora_embedding_A" in p or "lora_embedding_B" in p,
        )
        for mod, p in parts.items()
    }
    return modules, sorted(other)
