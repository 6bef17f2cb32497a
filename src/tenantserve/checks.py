"""``tenantserve check``'s core: every admission check over a whole registry, one row per adapter.

Unlike the launcher (which stops at the first refusal), this keeps going, so an operator sees every problem at
once; one bad adapter never hides or affects another's verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tenantserve.admission import BaseCheck, BaseFacts, admit, verify_base
from tenantserve.adapters import AdapterConfig, bytes_on_disk
from tenantserve.errors import TenantserveError
from tenantserve.fingerprint import fingerprint
from tenantserve.fpcache import FingerprintCache
from tenantserve.launcher import derive_max_lora_rank
from tenantserve.registry import ALLOWED_LORA_RANKS, Registry


@dataclass(frozen=True)
class CheckRow:
    tenant: str
    adapter: str
    rank: int | None
    bytes: int | None
    base_match: str  # "yes" | "no" | "unverified" | "-"
    verdict: str  # "ok" | "warn" | "refused"
    code: str  # "ok" or the refusal's reason code
    reason: str


@dataclass(frozen=True)
class CheckReport:
    base_result: str  # match | mismatch | unpinned | unreadable
    base_code: str
    base_message: str
    base_fingerprint: str | None
    max_lora_rank: int
    rows: tuple[CheckRow, ...]

    @property
    def ok(self) -> bool:
        return self.base_result in ("match", "unpinned") and all(r.verdict != "refused" for r in self.rows)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "ok": self.ok,
                "adapters": [asdict(r) for r in self.rows]}


def check_registry(registry: Registry, *, cache: FingerprintCache | None = None) -> CheckReport:
    cache = cache if cache is not None else FingerprintCache.default()
    max_rank = _slot_rank(registry)
    facts: BaseFacts | None = None
    try:
        fp = fingerprint(registry.base_path, cache=cache)
        base: BaseCheck = verify_base(registry, fp=fp)
        head = (base.result, "ok" if base.result != "mismatch" else "base_changed", base.message(), base.actual)
        if base.result != "mismatch":
            facts = BaseFacts.read(registry.base_path, fp=fp)
    except TenantserveError as exc:
        head = ("unreadable", exc.code, str(exc), None)
    rows = []
    for tenant, spec in registry.adapters():
        if facts is None:
            rows.append(CheckRow(tenant.id, spec.name, None, None, "-", "refused", "base_unusable",
                                 "not checked: the base is not usable (see above)"))
            continue
        try:
            a = admit(registry, spec, max_lora_rank=max_rank, base=facts, cache=cache)
        except TenantserveError as exc:
            rank = _rank_or_none(registry, spec)
            match = "no" if exc.code in ("base_mismatch", "base_conflict") else "-"
            rows.append(CheckRow(tenant.id, spec.name, rank, _bytes_or_none(registry, spec), match, "refused",
                                 exc.code, str(exc)))
            continue
        verdict, reason = ("warn", a.warnings[0]) if a.warnings else ("ok", "")
        rows.append(CheckRow(tenant.id, spec.name, a.rank, a.bytes, "yes" if a.base_verified else "unverified",
                             verdict, "ok", reason))
    return CheckReport(head[0], head[1], head[2], head[3], max_rank, tuple(rows))


def _slot_rank(registry: Registry) -> int:
    """The registry's max_lora_rank, or the one the launcher would derive from the readable configs."""
    if registry.engine.max_lora_rank is not None:
        return registry.engine.max_lora_rank
    ranks = [r for _, spec in registry.adapters() if (r := _rank_or_none(registry, spec)) is not None]
    try:
        return derive_max_lora_rank(ranks)
    except TenantserveError:
        return ALLOWED_LORA_RANKS[-1]


def _rank_or_none(registry: Registry, spec: object) -> int | None:
    try:
        return AdapterConfig.read(registry.adapter_path(spec)).max_rank  # type: ignore[arg-type]
    except (TenantserveError, OSError):
        return None


def _bytes_or_none(registry: Registry, spec: object) -> int | None:
    try:
        return bytes_on_disk(registry.adapter_path(spec))  # type: ignore[arg-type]
    except OSError:
        return None
