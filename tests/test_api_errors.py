"""The one error body (``tenantserve.api_errors``) against vLLM's own: the same fields, vLLM's ``type`` names, and the
answers the middleware copies from vLLM byte for byte; and the one bearer-header reader."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest

from tenantserve.api_errors import ERROR_TYPES, body_of, error_body, error_type
from tenantserve.bearer import bearer_header, bearer_token
from tenantserve.errors import AdapterError, Reason, TenantNotFound
from tenantserve.middleware.errors import InvalidParameter, ModelNotFound, RateLimited, RouteNotFound


def test_the_body_has_exactly_vllms_fields() -> None:
    from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

    body = error_body(400, Reason.RANK_TOO_HIGH, "too high")
    assert set(body) == set(ErrorResponse.model_fields)
    assert list(body["error"]) == list(ErrorInfo.model_fields)  # message, type, param, code: vLLM's order too
    assert body == {"error": {"message": "too high", "type": "BadRequestError", "param": None,
                              "code": "rank_too_high"}}
    assert json.loads(json.dumps(body)) == body  # a Reason goes to JSON as its plain string


def test_type_is_named_as_vllm_names_it() -> None:
    """vLLM's ``create_error_response`` decides ``type`` from the exception; ours from the status, same names."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import (
        RetryableRequestError,
        VLLMNotFoundError,
        VLLMServerError,
        VLLMUnprocessableEntityError,
        VLLMValidationError,
    )

    for exc in (VLLMValidationError("x"), VLLMNotFoundError("x"), VLLMUnprocessableEntityError("x"),
                VLLMServerError("x"), RetryableRequestError("x")):
        vllm = create_error_response(exc).error
        assert error_type(vllm.code) == vllm.type, (type(exc).__name__, vllm)


def test_every_status_has_one_stable_type() -> None:
    assert {s: error_type(s) for s in (401, 403, 409, 413, 429, 502)} == {
        401: "UnauthorizedError", 403: "ForbiddenError", 409: "ConflictError", 413: "RequestEntityTooLargeError",
        429: "TooManyRequestsError", 502: "BadGatewayError"}
    for status in ERROR_TYPES:  # the table agrees with vLLM's rule on this Python (and pins it on later ones)
        phrase = "".join(ch for ch in HTTPStatus(status).phrase if ch.isalnum())
        assert ERROR_TYPES[status] == (phrase if phrase.endswith("Error") else phrase + "Error")
    assert error_type(504) == "GatewayTimeoutError" and error_type(599) == "Error"


def test_copied_answers_are_vllms_bytes() -> None:
    """The unknown-model 404 and the missing-route 404 must not tell a tenant the middleware answered."""
    from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    unknown = create_error_response("The model `acme-sql` does not exist.", err_type="NotFoundError",
                                    status_code=HTTPStatus.NOT_FOUND, param="model")
    assert json.dumps(ModelNotFound("acme-sql").to_body()) == json.dumps(unknown.model_dump())
    missing = ErrorResponse(error=ErrorInfo(message="Not Found", type=HTTPStatus(404).phrase, code=404))
    assert json.dumps(RouteNotFound().to_body()) == json.dumps(missing.model_dump())


def test_typed_errors_carry_status_code_and_param() -> None:
    assert body_of(TenantNotFound("acme")) == {"error": {
        "message": "unknown tenant 'acme'", "type": "NotFoundError", "param": None, "code": "tenant_not_found"}}
    assert body_of(AdapterError("bad", code=Reason.PATH_ESCAPE, param="path"))["error"]["param"] == "path"
    salt = InvalidParameter("bad salt", param="cache_salt").to_body()["error"]
    assert (salt["type"], salt["code"], salt["param"]) == ("BadRequestError", "invalid_parameter", "cache_salt")
    limited = RateLimited("slow down", retry_after=3)
    assert limited.to_body()["error"]["type"] == "TooManyRequestsError" and limited.headers == {"retry-after": "3"}


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer tsk-1", "tsk-1"), ("bearer tsk-1", "tsk-1"), ("BEARER  tsk-1 ", "tsk-1"), ("Bearer", None),
    ("Bearer ", None), ("Bearer    ", None), ("Basic dXNlcg==", None), ("tsk-1", None), ("", None), (None, None),
    ("Bearertsk-1", None), ("Bearer\ttsk-1", None), ("Bearer a b", "a b"),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_bearer_header_round_trips() -> None:
    assert bearer_token(bearer_header("tsk-1")["Authorization"]) == "tsk-1"
    assert bearer_header(None) == {} and bearer_header("") == {}
