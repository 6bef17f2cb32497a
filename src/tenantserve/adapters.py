"""What an adapter directory says about itself: PEFT's ``adapter_config.json`` and the bytes of its weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tenantserve.errors import AdapterError

CONFIG_NAME = "adapter_config.json"
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
        if isinstance(targets, str):
            targets = (targets,)
        return cls(
            rank=rank,
            alpha=float(raw.get("lora_alpha", rank)),
            target_modules=tuple(sorted(targets)),
            peft_type=str(raw.get("peft_type", "")),
            declared_base=raw.get("base_model_name_or_path"),
            modules_to_save=tuple(raw.get("modules_to_save") or ()),
            raw=raw,
        )


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def bytes_on_disk(model_dir: Path) -> int:
    """Bytes of the weight files of a model or adapter directory."""
    return sum(p.stat().st_size for p in weight_files(model_dir))
