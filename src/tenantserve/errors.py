"""Typed errors raised inside tenantserve.

Each carries a stable ``code`` (for machines: metrics, JSON errors, tests) and a one-line message (for people).
They are translated exactly once: into one line plus an exit code at the CLI, into an error body with a 4xx at HTTP.
"""

from __future__ import annotations


class TenantserveError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    code: str = "error"
    exit_code: int = 1
    http_status: int = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class RegistryError(TenantserveError):
    """The tenant registry cannot be read, parsed or validated."""

    code = "registry_invalid"
    exit_code = 2


class AdapterError(TenantserveError):
    """An adapter cannot be admitted (bad config, rank too high, foreign base, ...)."""

    code = "adapter_invalid"
    exit_code = 2


class EngineError(TenantserveError):
    """The vLLM engine failed to start, stopped unexpectedly, or answered with an error."""

    code = "engine_error"
    exit_code = 3
    http_status = 502


class FingerprintError(TenantserveError):
    """A model or adapter directory cannot be fingerprinted (missing, unreadable, no model files)."""

    code = "fingerprint_failed"
    exit_code = 2


class BaseModelError(TenantserveError):
    """The served base model is not the pinned one (or cannot be read)."""

    code = "base_changed"
    exit_code = 2
