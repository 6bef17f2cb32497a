"""Typed errors raised inside tenantserve, and the one list of reason codes they carry.

Each error carries a stable ``code`` (a ``Reason``: for machines, in metrics, JSON errors and tests), a one-line
message (for people) and, when one field of a request is at fault, its ``param``. They are translated exactly once:
into one line plus an exit code at the CLI, into the OpenAI error body (``tenantserve.api_errors``) with a 4xx/5xx at
HTTP. ``Reason`` is every code any of them (or an HTTP answer tenantserve writes itself) may carry; the README's
reason-code tables document each one (``tests/test_reason_codes.py`` checks both ways).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Every reason code. A ``StrEnum``: a member is its string (``Reason.RANK_TOO_HIGH == "rank_too_high"``), so
    it goes to JSON, metrics labels and exit lines as is."""

    # the base classes' defaults
    ERROR = "error"
    REGISTRY_INVALID = "registry_invalid"
    ADAPTER_INVALID = "adapter_invalid"
    ENGINE_ERROR = "engine_error"
    FINGERPRINT_FAILED = "fingerprint_failed"
    BASE_CHANGED = "base_changed"
    # the registry and its file
    PATH_MISSING = "path_missing"
    REGISTRY_LOCKED = "registry_locked"
    REGISTRY_UNWRITABLE = "registry_unwritable"
    TENANT_NOT_FOUND = "tenant_not_found"
    KEY_NOT_FOUND = "key_not_found"
    # admission of an adapter (and of the base it needs)
    BASE_MISMATCH = "base_mismatch"
    BASE_UNDECLARED = "base_undeclared"
    BASE_CONFLICT = "base_conflict"
    BASE_CONFIG_MISSING = "base_config_missing"
    BASE_CONFIG_INVALID = "base_config_invalid"
    CONFIG_MISSING = "config_missing"
    CONFIG_INVALID = "config_invalid"
    CONFIG_UNREADABLE = "config_unreadable"
    CONFIG_TOO_LARGE = "config_too_large"
    STAMP_INVALID = "stamp_invalid"
    STAMP_TOO_LARGE = "stamp_too_large"
    NOT_LORA = "not_lora"
    RANK_TOO_HIGH = "rank_too_high"
    NO_TARGET_MATCH = "no_target_match"
    WEIGHTS_UNTARGETED = "weights_untargeted"
    UNKNOWN_MODULE = "unknown_module"
    SHAPE_MISMATCH = "shape_mismatch"
    UNSUPPORTED_MODULES = "unsupported_modules"
    UNSUPPORTED_FEATURE = "unsupported_feature"
    WEIGHTS_MISSING = "weights_missing"
    WEIGHTS_FORMAT = "weights_format"
    WEIGHTS_TRUNCATED = "weights_truncated"
    WEIGHTS_INVALID = "weights_invalid"
    WEIGHTS_HEADER_TOO_LARGE = "weights_header_too_large"
    WEIGHTS_STATE_DICT = "weights_state_dict"
    WEIGHTS_DTYPE = "weights_dtype"
    WEIGHTS_NOT_FINITE = "weights_not_finite"
    WEIGHTS_OUT_OF_RANGE = "weights_out_of_range"
    WEIGHTS_UNREADABLE = "weights_unreadable"
    SCALING_OUT_OF_RANGE = "scaling_out_of_range"
    ADAPTER_CHANGED = "adapter_changed"
    FILE_TOO_LARGE = "file_too_large"
    FILE_NOT_REGULAR = "file_not_regular"
    FILE_SYMLINK = "file_symlink"
    PATH_ESCAPE = "path_escape"
    PATH_INVALID = "path_invalid"
    PATH_OWNED = "path_owned"
    NAME_INVALID = "name_invalid"
    UNREADABLE = "unreadable"
    TOO_MANY_FILES = "too_many_files"
    ENGINE_LORA_INVALID = "engine_lora_invalid"
    ENGINE_MISSING = "engine_missing"
    STORE_CONFIG = "store_config"
    STORE_UNWRITABLE = "store_unwritable"
    NO_MODEL_FILES = "no_model_files"
    # launching the engine
    ADAPTERS_REFUSED = "adapters_refused"
    INSECURE_BIND = "insecure_bind"
    PORT_IN_USE = "port_in_use"
    ENGINE_EXITED = "engine_exited"
    ADAPTER_GUARD_UNAVAILABLE = "adapter_guard_unavailable"
    # the sidecar's admin API
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHORIZED = "unauthorized"
    MISSING_TOKEN = "missing_token"
    INVALID_TOKEN = "invalid_token"
    TENANT_EXISTS = "tenant_exists"
    ADAPTER_EXISTS = "adapter_exists"
    ADAPTER_NOT_FOUND = "adapter_not_found"
    ALREADY_LOADED = "already_loaded"
    NOT_SERVABLE = "not_servable"
    ENGINE_REFUSED = "engine_refused"
    ENGINE_LOAD_FAILED = "engine_load_failed"
    ENGINE_UNVERIFIED = "engine_unverified"
    ENGINE_DOWN = "engine_down"
    MALFORMED_REQUEST = "malformed_request"
    JSON_TOO_DEEP = "json_too_deep"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    SIDECAR_CONFIG = "sidecar_config"
    ADMIN_TOKEN_MISSING = "admin_token_missing"
    # the engine's OpenAI API (the middleware)
    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    ADMIN_ONLY = "admin_only"
    LOOPBACK_ONLY = "loopback_only"
    ADMIN_DISABLED = "admin_disabled"
    MODEL_NOT_FOUND = "model_not_found"
    RATE_LIMITED = "rate_limited"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_JSON = "invalid_json"
    INVALID_PARAMETER = "invalid_parameter"
    TOO_MANY_SEQUENCES = "too_many_sequences"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    # operator commands
    SIDECAR_UNREACHABLE = "sidecar_unreachable"
    USAGE = "usage"
    PIN_PATH = "pin_path"
    TRACE_INVALID = "trace_invalid"
    PROMPTS_INVALID = "prompts_invalid"
    TASK_INVALID = "task_invalid"
    LM_EVAL_MISSING = "lm_eval_missing"
    LM_EVAL_FAILED = "lm_eval_failed"
    DEDICATED_BASE_INVALID = "dedicated_base_invalid"
    PEFT_MISSING = "peft_missing"
    ADAPTER_UNLOADABLE = "adapter_unloadable"
    ADAPTER_UNKNOWN = "adapter_unknown"
    MODEL_NOT_SERVED = "model_not_served"
    ENGINE_UNREACHABLE = "engine_unreachable"
    ENGINE_TIMEOUT = "engine_timeout"
    REQUEST_REFUSED = "request_refused"


class TenantserveError(Exception):
    """Base class: a problem the user can fix, reported without a traceback. ``param``: the request field at
    fault, when there is one (the ``param`` of the OpenAI error body)."""

    code: str = Reason.ERROR
    exit_code: int = 1
    http_status: int = 400
    param: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param

    @property
    def message(self) -> str:
        return str(self)


class RegistryError(TenantserveError):
    """The tenant registry cannot be read, parsed or validated."""

    code = Reason.REGISTRY_INVALID
    exit_code = 2


class TenantNotFound(TenantserveError):
    """No tenant with that id in the registry: the one answer for it (admin API 404, CLI exit 2)."""

    code = Reason.TENANT_NOT_FOUND
    exit_code = 2
    http_status = 404

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"unknown tenant '{tenant_id}'")
        self.tenant_id = tenant_id


class AdapterError(TenantserveError):
    """An adapter cannot be admitted (bad config, rank too high, foreign base, ...)."""

    code = Reason.ADAPTER_INVALID
    exit_code = 2


class EngineError(TenantserveError):
    """The vLLM engine failed to start, stopped unexpectedly, or answered with an error."""

    code = Reason.ENGINE_ERROR
    exit_code = 3
    http_status = 502


class FingerprintError(TenantserveError):
    """A model or adapter directory cannot be fingerprinted (missing, unreadable, no model files)."""

    code = Reason.FINGERPRINT_FAILED
    exit_code = 2


class BaseModelError(TenantserveError):
    """The served base model is not the pinned one (or cannot be read)."""

    code = Reason.BASE_CHANGED
    exit_code = 2
