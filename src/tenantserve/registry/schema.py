"""The tenant registry (``configs/adapters.yaml``): the single source of truth for what one engine serves.

Pydantic models describe it; ``Registry.load`` reads and validates a file and reports every problem with the
place it was found (``adapters.yaml:14: tenants[0].adapters[1].name: ...``); ``Registry.save`` writes atomically,
so a reader (or a crash half-way) never sees half a file. Relative paths in the file are relative to the file.
A change to a registry others may write goes through ``registry.update.update_registry`` (the sidecar,
``tenantserve keys``, ``fingerprint --pin``): it holds ``RegistryLock`` from read to write, so two writers never
lose each other's change, and re-validates before writing.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tenantserve.errors import RegistryError
from tenantserve.registry.knobs import ALLOWED_LORA_RANKS
from tenantserve.registry.yamlpos import YamlDocument
from tenantserve.settings import ADMIN_TOKEN_ENV, METRICS_TOKEN_ENV

#: Adapter names become OpenAI model names and path-like keys: keep them to a safe, printable alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"

AdapterName = Annotated[str, Field(pattern=NAME_PATTERN)]

#: Ids the tenant middleware uses for itself: its metric placeholders (``anonymous``, ``other``) and the admin
#: caller's label. A tenant so named would be counted as, or mistaken for, them.
RESERVED_TENANT_IDS = frozenset({"admin", "anonymous", "other"})
#: Names vLLM 0.32 could pick an adapter by without the request's ``model``: its "default multimodal LoRA" applies a
#: loaded adapter named like the prefix (before '_') of a chat content-part ``type`` or a modality. tenantserve turns
#: that selection off (``tenantserve.middleware.adapter_guard``); these names stay refused on top, so an engine
#: without the guard still never applies an adapter to ordinary requests. tests/registry/test_registry.py derives the
#: prefixes from vLLM's own content-part types and checks they are all here.
RESERVED_ADAPTER_NAMES = frozenset({
    "audio", "document", "file", "image", "input", "output", "prompt", "refusal", "text", "thinking", "tool", "video",
    "vision",
})
#: ``vllm serve`` options that select adapters by something other than ``model`` (any unambiguous abbreviation too).
FORBIDDEN_ENGINE_ARGS = ("--default-mm-loras",)


def check_tenant_id(value: str) -> str:
    """A tenant id that is not one of the middleware's own names; ``ValueError`` otherwise."""
    if value in RESERVED_TENANT_IDS:
        reserved = ", ".join(sorted(RESERVED_TENANT_IDS))
        raise ValueError(f"tenant id '{value}' is reserved ({reserved}: the middleware's own callers and labels)")
    return value


def check_adapter_name(value: str) -> str:
    """An adapter name vLLM cannot apply outside ``model``; ``ValueError`` for the reserved ones."""
    if value.lower() in RESERVED_ADAPTER_NAMES:
        reserved = ", ".join(sorted(RESERVED_ADAPTER_NAMES))
        raise ValueError(f"adapter name '{value}' is reserved: vLLM would apply an adapter so named to chat requests "
                         f"by their content-part types, whatever their model (reserved: {reserved})")
    return value


def forbidden_engine_arg(arg: str) -> str | None:
    """The forbidden option ``arg`` spells (vLLM accepts '_' for '-' and unique abbreviations), or None."""
    key = arg.split("=", 1)[0].lower().replace("_", "-")
    for option in FORBIDDEN_ENGINE_ARGS:
        if key.startswith("--") and option.startswith(key) and len(key) > len("--default-"):
            return option
    return None


TenantId = Annotated[str, Field(pattern=TENANT_PATTERN), AfterValidator(check_tenant_id)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BaseSpec(_Strict):
    """The base model every adapter in this registry is applied to."""

    name: AdapterName = Field(description="Model name clients send in the OpenAI `model` field for the base.")
    path: Path = Field(description="Directory of the base model (config.json, weights, tokenizer).")
    fingerprint: str | None = Field(
        default=None, description="Pinned fingerprint of the base; the engine refuses a base that differs."
    )
    files: dict[str, str] | None = Field(
        default=None, description="Pinned sha256 of each base file, so a refusal can name the files that changed."
    )


class EngineSpec(_Strict):
    """Engine knobs: how many adapters fit in the batch's slots, how large they may be, how many stay in host memory."""

    max_loras: int = Field(default=2, ge=1, le=256, description="Adapter slots: distinct adapters in one batch.")
    max_lora_rank: int | None = Field(
        default=None, description="Largest adapter rank (slot size). Derived from the adapters when left out."
    )
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Adapters kept in host memory (>= max_loras). Default: every registered one."
    )
    max_model_len: int | None = Field(default=None, ge=16, description="Context length; <= the base's positions.")
    dtype: str = Field(default="auto", pattern=r"^(auto|float32|float16|bfloat16)$")
    extra_args: list[str] = Field(default_factory=list, description="Further `vllm serve` arguments, verbatim.")

    @model_validator(mode="after")
    def _check_knobs(self) -> EngineSpec:
        if self.max_lora_rank is not None and self.max_lora_rank not in ALLOWED_LORA_RANKS:
            allowed = ", ".join(map(str, ALLOWED_LORA_RANKS))
            raise ValueError(f"max_lora_rank {self.max_lora_rank} is not one vLLM accepts ({allowed})")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras {self.max_cpu_loras} must be >= max_loras {self.max_loras} "
                "(every adapter in a slot is also held in host memory)"
            )
        for arg in self.extra_args:
            if (option := forbidden_engine_arg(arg)) is not None:
                raise ValueError(f"extra_args: '{arg}' ({option}) is refused: it makes vLLM apply adapters chosen "
                                 "by a request's content-part types instead of its model, across tenants")
        return self


class AdapterSpec(_Strict):
    """One LoRA fine-tune, served under ``name`` as an OpenAI model."""

    name: Annotated[AdapterName, AfterValidator(check_adapter_name)]
    path: Path
    base_fingerprint: str | None = Field(default=None, description="Fingerprint of the base it was trained on.")
    allow_unverified_base: bool = Field(
        default=False, description="Serve even though the adapter declares no base (warned at every start)."
    )
    fingerprint: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = Field(
        default=None, description="Content admitted at onboarding (admission.store): a folder whose served files no "
        "longer have it is refused (adapter_changed). Recorded by the sidecar."
    )


class ApiKeySpec(_Strict):
    """One tenant API key, stored only as the SHA-256 of the key (the key itself is shown once, at creation)."""

    id: Annotated[str, Field(pattern=r"^key-[0-9a-f]{8,32}$")] = Field(description="Public handle for list/revoke.")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] = Field(description="Hex SHA-256 of the full key.")
    created: datetime
    revoked: bool = Field(default=False, description="A revoked key is refused but kept for the audit trail.")


class TenantSpec(_Strict):
    """A customer: its adapters, and whether it may also use the plain base model."""

    id: TenantId
    allow_base: bool = Field(default=True, description="May this tenant send requests to the base model?")
    adapters: list[AdapterSpec] = Field(default_factory=list)
    api_keys: list[ApiKeySpec] = Field(default_factory=list, description="Several keys per tenant, for rotation.")
    max_in_flight: int | None = Field(
        default=None, ge=1, description="Sequences in flight for this tenant; default security.max_in_flight."
    )
    max_sequences_per_request: int | None = Field(
        default=None, ge=1, description="Largest n x prompts one request may ask for; default security's."
    )


class SecuritySpec(_Strict):
    """What the tenantserve middleware enforces inside vLLM's API server (tenantserve.middleware.TenantMiddleware).

    Secure by default: a registry without this section requires tenant keys. A registry for a loopback-only demo
    may say ``auth: false``; the launcher then starts plain vLLM without the middleware.
    """

    auth: bool = Field(default=True, description="Require tenant API keys (and load the middleware).")
    admin_token_env: str = Field(
        default=ADMIN_TOKEN_ENV, description="Environment variable holding the admin bearer token."
    )
    admin_loopback_only: bool = Field(default=True, description="Admin routes answer only clients on loopback.")
    metrics_token_env: str = Field(
        default=METRICS_TOKEN_ENV, description="Env var of the token /metrics needs off loopback."
    )
    max_in_flight: int = Field(
        default=32, ge=1, description="Default per-tenant limit of sequences in flight (a request counts n x prompts)."
    )
    max_sequences_per_request: int = Field(
        default=16, ge=1, description="Default largest n x prompts (x best_of) one request may ask for (400 above)."
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted (413 above).")


class Registry(_Strict):
    """The whole registry file."""

    version: int = Field(default=1, ge=1, le=1)
    base: BaseSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    tenants: list[TenantSpec] = Field(default_factory=list)
    security: SecuritySpec = Field(default_factory=SecuritySpec)

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _source: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_unique(self) -> Registry:
        seen_tenants: set[str] = set()
        owner: dict[str, str] = {}
        for tenant in self.tenants:
            if tenant.id in seen_tenants:
                raise ValueError(f"tenant id '{tenant.id}' appears twice")
            seen_tenants.add(tenant.id)
            for adapter in tenant.adapters:
                if adapter.name == self.base.name:
                    raise ValueError(f"adapter name '{adapter.name}' (tenant {tenant.id}) is the base model's name")
                if adapter.name in owner:
                    raise ValueError(
                        f"duplicate adapter name '{adapter.name}' (tenants {owner[adapter.name]} and {tenant.id}):"
                        " adapter names are model names and must be unique on one engine"
                    )
                owner[adapter.name] = tenant.id
        self._check_unique_keys()
        return self

    def _check_unique_keys(self) -> None:
        """One key hash (or key id) in two places would let one tenant's key authenticate as another."""
        seen: dict[tuple[str, str], tuple[Any, ...]] = {}
        for ti, tenant in enumerate(self.tenants):
            for ki, key in enumerate(tenant.api_keys):
                for kind, value in (("sha256", key.sha256), ("id", key.id)):
                    loc = ("tenants", ti, "api_keys", ki, kind)
                    if (kind, value) in seen:
                        raise PydanticCustomError(
                            "duplicate_key", "duplicate API key {kind} {value}: at {first} and at {second}",
                            {"kind": kind, "value": value if kind == "id" else value[:12] + "...",
                             "first": _dotted(seen[kind, value]), "second": _dotted(loc),
                             "places": (seen[kind, value], loc)},
                        )
                    seen[kind, value] = loc

    # -- views -------------------------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """Directory that relative paths in the registry are relative to."""
        return self._root

    @property
    def source(self) -> Path | None:
        """The file this registry was loaded from (absolute), if any."""
        return self._source

    def resolve(self, path: Path) -> Path:
        return (self._root / path).resolve() if not path.is_absolute() else path

    @property
    def base_path(self) -> Path:
        return self.resolve(self.base.path)

    def adapters(self) -> list[tuple[TenantSpec, AdapterSpec]]:
        """Every (tenant, adapter) pair, in file order."""
        return [(t, a) for t in self.tenants for a in t.adapters]

    def adapter_path(self, adapter: AdapterSpec) -> Path:
        return self.resolve(adapter.path)

    def find_adapter(self, name: str) -> tuple[TenantSpec, AdapterSpec] | None:
        return next(((t, a) for t, a in self.adapters() if a.name == name), None)

    def tenant(self, tenant_id: str) -> TenantSpec | None:
        return next((t for t in self.tenants if t.id == tenant_id), None)

    # -- I/O -----------------------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, source: str = "<registry>", root: Path | None = None) -> Registry:
        """Validate registry text; errors name the file, the line and the key path."""
        return cls.from_document(YamlDocument.parse(text, source=source, error=RegistryError), source=source,
                                 root=root)

    @classmethod
    def from_document(cls, doc: YamlDocument, *, source: str = "<registry>", root: Path | None = None) -> Registry:
        """Validate parsed registry YAML; errors name the file, the line and the key path."""
        if not isinstance(doc.data, dict):
            raise RegistryError(f"{source}: the registry must be a mapping with at least a 'base' section")
        try:
            registry = cls.model_validate(doc.data)
        except ValidationError as exc:
            raise RegistryError(_format_validation(exc, doc, source)) from None
        registry._root = (root or Path.cwd()).resolve()
        return registry

    @classmethod
    def load(cls, path: Path | str, *, check_paths: bool = True) -> Registry:
        """Read and validate a registry file; with ``check_paths``, every model directory must exist."""
        path = Path(path)
        registry = cls.parse(read_registry_text(path), source=str(path), root=path.parent)
        registry._source = path.resolve()
        if check_paths:
            registry.check_paths(source=str(path))
        return registry

    def check_paths(self, *, source: str = "<registry>") -> None:
        missing = []
        if not self.base_path.is_dir():
            missing.append(f"base.path: {self.base_path} is not a directory")
        for tenant, adapter in self.adapters():
            p = self.adapter_path(adapter)
            if not p.is_dir():
                missing.append(f"adapter '{adapter.name}' (tenant {tenant.id}): path {p} is not a directory")
        if missing:
            raise RegistryError(f"{source}: " + "; ".join(missing), code="path_missing")

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)

    def save(self, path: Path | str) -> None:
        """Write atomically: temp file in the same directory, fsync, rename, fsync the directory. An existing file
        keeps its comments, key order and quoting whenever the new text provably means exactly this registry
        (``registry.update.render``); otherwise it is rewritten as plain YAML. No lock and no re-validation: a
        change to a shared registry goes through ``registry.update.update_registry``."""
        from tenantserve.registry.update import LoadedRegistry, render

        path = Path(path)
        try:
            old = LoadedRegistry.read(path)
        except RegistryError:  # missing, unreadable or invalid: no layout worth keeping, unless ruamel can merge
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = None
            atomic_write_text(path, render(self, old_text=text), follow_symlink=True)
            return
        atomic_write_text(path, render(self, old, old.registry.model_dump(mode="json", exclude_none=True)),
                          follow_symlink=True)


class RegistryLock:
    """Exclusive, cross-process lock for one read-modify-write of a registry file: ``flock`` on a sibling file
    (``.adapters.yaml.lock``; the registry itself is replaced by rename, so it cannot carry the lock). Released by
    the kernel if the holder dies. Waits up to ``timeout`` seconds, then raises a ``RegistryError``."""

    def __init__(self, path: Path | str, timeout: float = 30.0) -> None:
        path = Path(path)
        self.path = path.parent / f".{path.name}.lock"
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> Self:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RegistryError(f"cannot create the registry lock {self.path}: {exc.strerror or exc}",
                                code="registry_unwritable") from None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RegistryError(f"another writer has held the registry lock {self.path} for more than "
                                        f"{self.timeout:.0f} s; try again", code="registry_locked") from None
                time.sleep(0.02)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_registry_text(path: Path) -> str:
    """The registry file's text (UTF-8). Raises ``RegistryError`` naming the file: not found, unreadable, not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read registry: {exc}") from None


def atomic_write_text(path: Path, text: str, *, follow_symlink: bool = False) -> None:
    """Replace ``path`` with ``text`` (UTF-8) by rename: a reader sees the old file or the new one, never a part.
    An existing regular file keeps its read/write/execute bits (a registry the engine's user reads stays readable
    to it; the temporary file alone would be 0600); a new file, or one that was a link, is 0600.
    ``follow_symlink`` (the operator's registry only): a symlink is written through, its target replaced and the
    link kept (a registry linked from a deployed config directory keeps being that file); otherwise the link itself
    is replaced (a file in a tenant's folder must never redirect a write elsewhere). Raises ``OSError`` (not
    writable, disk full)."""
    if follow_symlink and os.path.islink(path):
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)  # a link still here is replaced, not followed: its target's mode is not copied
        mode: int | None = stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else None
    except FileNotFoundError:
        mode = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _format_validation(exc: ValidationError, doc: YamlDocument, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc: tuple[Any, ...] = tuple(err["loc"])
        where = _dotted(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "duplicate_key":  # name both places with their lines
            ctx = err["ctx"]
            first, second = (f"{_dotted(p)} ({source}:{doc.line_of(p)})" for p in ctx["places"])
            msg = f"duplicate API key {ctx['kind']} {ctx['value']}: at {first} and at {second}"
            loc = tuple(ctx["places"][1])
            where = _dotted(loc)
        elif err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        elif err["type"] == "string_pattern_mismatch":
            msg = f"invalid value {err.get('input')!r} (allowed: {err['ctx']['pattern']})"
        line = doc.line_of(loc)
        lines.append(f"{source}:{line}: {where}: {msg}" if line else f"{source}: {where}: {msg}")
    return "; ".join(lines)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
