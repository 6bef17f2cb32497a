"""The served base model: what it is (fingerprint, config, tensor shapes) and whether it is the pinned one.

``BaseFacts.read`` is the only I/O (a cached fingerprint plus safetensors headers: cheap on a re-check);
``verify_base`` compares it with the registry's pin and returns a ``BaseCheck`` - match, mismatch or unpinned - that
the launcher turns into a refusal and the sidecar counts in ``tenantserve_base_fingerprint_checks_total{result}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tenantserve.admission.fingerprint import FileChange, Fingerprint, Progress, fingerprint, manifest_digest
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.weights import BASE_HEADER_LIMIT, TensorInfo, read_bounded, read_headers
from tenantserve.errors import BaseModelError
from tenantserve.registry.schema import Registry

BaseResult = Literal["match", "mismatch", "unpinned"]
_LAYER = re.compile(r"\.layers\.(\d+)\.")
_CONFIG_LIMIT = 16 << 20


@dataclass(frozen=True)
class BaseFacts:
    """What admission needs to know about the base: identity, sizes, and every linear layer's (out, in) shape."""

    path: Path
    fingerprint: Fingerprint
    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    tied_embeddings: bool
    tensors: dict[str, TensorInfo] | None  # None: weights are not safetensors, shapes unknown
    max_position_embeddings: int | None = None  # vLLM hands it to its adapter-config reader

    @classmethod
    def read(
        cls, path: Path, *, cache: FingerprintCache | None = None, workers: int | None = None,
        on_progress: Progress | None = None, fp: Fingerprint | None = None,
    ) -> BaseFacts:
        """``fp``: the fingerprint when already computed (check the pin first, then parse what it vouches for).
        ``cache``: default the user's fingerprint cache, so a re-read of an unchanged base is a stat per file."""
        if fp is None:
            cache = cache if cache is not None else FingerprintCache.default()
            fp = fingerprint(path, cache=cache, workers=workers, on_progress=on_progress)
        who = f"base at {path}"
        try:
            config = json.loads(read_bounded(path / "config.json", _CONFIG_LIMIT, who=who,
                                             too_large="base_config_invalid", unreadable="base_config_invalid",
                                             error=BaseModelError))
        except FileNotFoundError:
            raise BaseModelError(f"{who}: config.json not found", code="base_config_missing") from None
        except (ValueError, RecursionError) as exc:
            raise BaseModelError(f"{who}: config.json unreadable: {exc}", code="base_config_invalid") from None
        if not isinstance(config, dict):
            raise BaseModelError(f"{who}: config.json is not an object", code="base_config_invalid")
        shards = sorted(path.glob("*.safetensors"))
        tensors = read_headers(shards, who=who, error=BaseModelError, limit=BASE_HEADER_LIMIT) if shards else None
        return cls(
            path=path,
            fingerprint=fp,
            hidden_size=_int(config.get("hidden_size")),
            num_layers=_int(config.get("num_hidden_layers")),
            vocab_size=_int(config.get("vocab_size")),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            tensors=tensors,
            max_position_embeddings=_int(config.get("max_position_embeddings")),
        )

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Module name -> (out, in) for every 2-D weight; a tied ``lm_head`` borrows ``embed_tokens``' shape."""
        out: dict[str, tuple[int, int]] = {}
        for name, info in (self.tensors or {}).items():
            if name.endswith(".weight") and len(info.shape) == 2:
                out[name.removesuffix(".weight")] = (info.shape[0], info.shape[1])
        if self.tied_embeddings and "lm_head" not in out:
            embed = next((s for m, s in out.items() if m.endswith("embed_tokens")), None)
            if embed is not None:
                out["lm_head"] = embed
        return out

    def layer_of(self, module: str) -> int | None:
        """The decoder block index in a module name (``model.layers.3.mlp.up_proj`` -> 3); None outside a block."""
        m = _LAYER.search("." + module + ".")
        return int(m.group(1)) if m else None


@dataclass(frozen=True)
class BaseCheck:
    """The served base against the registry's pin."""

    result: BaseResult
    actual: str
    pinned: str | None
    changes: tuple[FileChange, ...] = ()
    path: Path | None = None

    def message(self) -> str:
        """One line for the operator: the result, and on a mismatch the changed files and how to re-pin."""
        if self.result == "match":
            return f"base matches its pin {self.actual}"
        if self.result == "unpinned":
            return (f"base at {self.path} is not pinned (fingerprint {self.actual}): "
                    "run `tenantserve fingerprint BASE_DIR --pin` to refuse a changed base from now on")
        changed = ", ".join(c.describe() for c in self.changes) or (
            "changed files unknown: the registry has no base.files (`tenantserve fingerprint --pin` records them)")
        return (f"base at {self.path} is not the pinned model: pinned {self.pinned}, found {self.actual}; "
                f"changed: {changed}. If the change is intended, re-pin with `tenantserve fingerprint BASE_DIR --pin`")

    def require_match(self) -> None:
        """Raise ``BaseModelError`` (code ``base_changed``) unless the base is the pinned one (or unpinned)."""
        if self.result == "mismatch":
            raise BaseModelError(self.message(), code="base_changed")


def compare_pin(fp: Fingerprint, pinned: str | None, pinned_files: dict[str, str] | None) -> BaseCheck:
    """Pure: a fingerprint against a pin (and the pinned per-file digests, when recorded)."""
    if pinned is None:
        return BaseCheck("unpinned", fp.value, None, path=fp.path)
    if fp.value == pinned:
        return BaseCheck("match", fp.value, pinned, path=fp.path)
    files = pinned_files if pinned_files and manifest_digest(pinned_files) == pinned else None
    return BaseCheck("mismatch", fp.value, pinned, tuple(fp.diff(files)) if files else (), path=fp.path)


def verify_base(
    registry: Registry, *, facts: BaseFacts | None = None, fp: Fingerprint | None = None,
    cache: FingerprintCache | None = None,
) -> BaseCheck:
    """Fingerprint the registry's base (cached: a stat per file when unchanged) and compare it with the pin.

    ``facts`` / ``fp``: reuse what was already computed. ``cache``: default the user's fingerprint cache.
    """
    if fp is None:
        fp = facts.fingerprint if facts is not None else fingerprint(
            registry.base_path, cache=cache if cache is not None else FingerprintCache.default())
    return compare_pin(fp, registry.base.fingerprint, registry.base.files)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def pin_registry_text(text: str, fp: Fingerprint) -> str | None:
    """The registry text with ``base.fingerprint`` / ``base.files`` set, comments and layout kept. Pure.

    Returns None when the base section is not a plain block mapping (the caller then rewrites the whole file).
    """
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(r"^base:\s*(#.*)?$", ln)), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^[^\s#]", lines[i])), len(lines))
    body = lines[start + 1 : end]
    indent = next((m.group(1) for ln in body if (m := re.match(r"^(\s+)[A-Za-z_]", ln))), "  ")
    kept, skipping = [], False
    for ln in body:
        if re.match(rf"^{indent}(fingerprint|files):", ln):
            skipping = True
            continue
        if skipping and (ln.startswith(indent + " ") or not ln.strip()):
            continue
        skipping = False
        kept.append(ln)
    blank_after = bool(kept) and not kept[-1].strip()
    while kept and not kept[-1].strip():
        kept.pop()
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    pin = [f"{indent}fingerprint: {fp.value}   # pinned by `tenantserve fingerprint --pin`\n", f"{indent}files:\n"]
    pin += [f"{indent}  {name}: {digest}\n" for name, digest in fp.manifest().items()]
    return "".join(lines[: start + 1] + kept + pin + (["\n"] if blank_after else []) + lines[end:])
