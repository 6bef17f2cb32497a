"""``tenantserve check``'s core: every admission check over a whole registry, one row per adapter.

The same judgement as ``launch`` (``admission.judge.admit_adapters``), shown whole: every problem at once, one bad
adapter never hides or affects another's verdict. Unlike ``launch`` (which serves the admitted adapters), ``check`` is
strict: any refusal fails it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tenantserve.admission.adapter_dir import bytes_on_disk
from tenantserve.admission.admit import BaseCheck, BaseFacts, verify_base
from tenantserve.admission.fingerprint import fingerprint
from tenantserve.admission.fingerprint_cache import FingerprintCache
from tenantserve.admission.judge import admit_adapters, config_rank, unjudged_rank
from tenantserve.errors import TenantserveError
from tenantserve.registry.knobs import resolve_knobs
from tenantserve.registry.schema import Registry


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
    #: Not failures (``ok`` ignores them): e.g. a tenant no request can reach (auth on, no usable key).
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.base_result in ("match", "unpinned") and all(r.verdict != "refused" for r in self.rows)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "ok": self.ok,
                "adapters": [asdict(r) for r in self.rows]}


def keyless_tenants(registry: Registry) -> tuple[str, ...]:
    """One warning per tenant with no unrevoked API key while ``security.auth`` is on (none when it is off). Pure."""
    if not registry.security.auth:
        return ()
    return tuple(f"tenant '{t.id}' has no API key: with security.auth on, no request can reach it "
                 f"(`tenantserve keys create --tenant {t.id}`)" for t in registry.tenants
                 if not any(not key.revoked for key in t.api_keys))


def check_registry(registry: Registry, *, cache: FingerprintCache | None = None) -> CheckReport:
    """Judge the base and every adapter exactly as ``launch`` would (same admission, same engine knobs, the rank
    derived from the admitted adapters only), keeping every row. A missing adapter directory is a refused row
    (``path_missing``), never an error before the table. Raises only ``RegistryError`` (the engine section)."""
    cache = cache if cache is not None else FingerprintCache.default()
    resolve_knobs(registry, {})  # a bad engine section is a registry error (exit 2), not a row
    facts: BaseFacts | None = None
    try:
        fp = fingerprint(registry.base_path, cache=cache)
        base: BaseCheck = verify_base(registry, fp=fp)
        head = (base.result, "ok" if base.result != "mismatch" else "base_changed", base.message(), base.actual)
        if base.result != "mismatch":
            facts = BaseFacts.read(registry.base_path, fp=fp)
    except TenantserveError as exc:
        head = ("unreadable", exc.code, str(exc), None)
    if facts is None:
        rows = [CheckRow(tenant.id, spec.name, None, None, "-", "refused", "base_unusable",
                         "not checked: the base is not usable (see above)") for tenant, spec in registry.adapters()]
        return CheckReport(head[0], head[1], head[2], head[3], unjudged_rank(registry), tuple(rows),
                           keyless_tenants(registry))
    judged = admit_adapters(registry, facts, cache=cache)
    admitted = {spec.name: a for _, spec, a in judged.admitted}
    refused = {r.adapter: r for r in judged.refused}
    rows = []
    for tenant, spec in registry.adapters():
        if (a := admitted.get(spec.name)) is not None:
            verdict, reason = ("warn", a.warnings[0]) if a.warnings else ("ok", "")
            rows.append(CheckRow(tenant.id, spec.name, a.rank, a.bytes, "yes" if a.base_verified else "unverified",
                                 verdict, "ok", reason))
            continue
        r = refused[spec.name]
        match = "no" if r.code in ("base_mismatch", "base_conflict") else "-"
        rows.append(CheckRow(tenant.id, spec.name, config_rank(registry, spec), _bytes_or_none(registry, spec),
                             match, "refused", r.code, r.message))
    return CheckReport(head[0], head[1], head[2], head[3], judged.knobs.max_lora_rank, tuple(rows),
                       keyless_tenants(registry))


def _bytes_or_none(registry: Registry, spec: object) -> int | None:
    try:
        return bytes_on_disk(registry.adapter_path(spec))  # type: ignore[arg-type]
    except OSError:
        return None
