"""Route classification and access decisions: pure, no app."""

from __future__ import annotations

import pytest

from tenantserve.middleware import errors
from tenantserve.middleware.policy import ADMIN, AccessView, Route, authorize, classify, is_loopback
from tests.middleware.conftest import ADMIN_TOKEN, ENV, METRICS_TOKEN, World


@pytest.mark.parametrize(("method", "path", "route"), [
    ("GET", "/health", Route.PUBLIC),
    ("GET", "/metrics", Route.METRICS),
    ("GET", "/v1/models", Route.MODELS),
    ("POST", "/v1/completions", Route.INFERENCE),
    ("POST", "/v1/chat/completions", Route.INFERENCE),
    ("POST", "/v1/load_lora_adapter", Route.ADMIN),
    ("POST", "/v1/unload_lora_adapter", Route.ADMIN),
    ("POST", "/adapters", Route.ADMIN),
    ("DELETE", "/adapters/sql", Route.ADMIN),
    ("POST", "/sleep", Route.ADMIN),
    ("POST", "/collective_rpc", Route.ADMIN),
    ("POST", "/reset_prefix_cache", Route.ADMIN),
    ("POST", "/v1/completions/", Route.REDIRECT),  # vLLM's router: 307 to /v1/completions
    ("GET", "/v1/completions/", Route.ADMIN),  # the canonical route is not a tenant route for GET
    ("POST", "/v1/load_lora_adapter/", Route.ADMIN),
    ("GET", "/v1/models/sql", Route.MODEL_CARD),
    ("GET", "/v1/models/", Route.REDIRECT),
    ("DELETE", "/v1/models/sql", Route.ADMIN),
    ("GET", "/v1/completions", Route.ADMIN),
    ("POST", "/V1/completions", Route.ADMIN),
    ("POST", "/v1//load_lora_adapter", Route.ADMIN),
    ("GET", "/some/route/vllm/adds/later", Route.ADMIN),
])
def test_classify_is_deny_by_default(method: str, path: str, route: Route) -> None:
    assert classify(method, path) is route


@pytest.mark.parametrize(("host", "ok"), [("127.0.0.1", True), ("::1", True), ("127.8.9.1", True),
                                          ("10.0.0.1", False), ("testclient", False), (None, False), ("", False)])
def test_loopback(host: str | None, ok: bool) -> None:
    assert is_loopback(host) is ok


def test_view_acl_own_adapters_and_base_only_where_allowed(world: World) -> None:
    view = AccessView.build(world.registry, ENV)
    assert view.allowed_models("acme") == {"sql", "demo-base"}
    assert view.allowed_models("globex") == {"pirate"}  # allow_base: false
    assert view.allowed_models(ADMIN) == {"demo-base", "sql", "pirate", "french"}
    assert view.check_model("acme", None) == "demo-base"  # omitted model = the base
    for caller, model in [("acme", "pirate"), ("globex", "demo-base"), ("globex", None), ("acme", "nope"),
                          ("acme", "../sql"), ("acme", "ѕql")]:
        with pytest.raises(errors.ModelNotFound):
            view.check_model(caller, model)
    for caller, model in [("acme", ["sql"]), ("acme", 123), ("acme", True), ("globex", {"id": "pirate"}),
                          (ADMIN, 1)]:  # vLLM's own answer for a non-string model: 400, for anyone
        with pytest.raises(errors.InvalidParameter) as exc:
            view.check_model(caller, model)
        assert exc.value.http_status == 400 and exc.value.to_body()["error"]["param"] == "model"


def test_tenant_route_needs_a_live_key(world: World) -> None:
    view = AccessView.build(world.registry, ENV)
    assert authorize(view, Route.INFERENCE, world.keys["acme"], "10.0.0.1") == "acme"
    assert authorize(view, Route.INFERENCE, ADMIN_TOKEN, "10.0.0.1") == ADMIN
    with pytest.raises(errors.MissingKey):
        authorize(view, Route.INFERENCE, None, "127.0.0.1")
    with pytest.raises(errors.InvalidKey):
        authorize(view, Route.INFERENCE, "tsk-wrong", "127.0.0.1")


def test_admin_route_needs_admin_token_and_loopback(world: World) -> None:
    view = AccessView.build(world.registry, ENV)
    assert authorize(view, Route.ADMIN, ADMIN_TOKEN, "127.0.0.1") == ADMIN
    with pytest.raises(errors.LoopbackOnly):
        authorize(view, Route.ADMIN, ADMIN_TOKEN, "10.0.0.1")
    with pytest.raises(errors.AdminOnly):
        authorize(view, Route.ADMIN, "tsk-not-a-key", "127.0.0.1")
    with pytest.raises(errors.MissingKey):
        authorize(view, Route.ADMIN, None, "127.0.0.1")
    world.registry.security.admin_loopback_only = False
    assert authorize(AccessView.build(world.registry, ENV), Route.ADMIN, ADMIN_TOKEN, "10.0.0.1") == ADMIN


def test_admin_routes_closed_when_no_admin_token_is_configured(world: World) -> None:
    view = AccessView.build(world.registry, {})
    with pytest.raises(errors.AdminDisabled):
        authorize(view, Route.ADMIN, "anything", "127.0.0.1")
    with pytest.raises(errors.AdminDisabled):
        authorize(view, Route.ADMIN, "", "127.0.0.1")


def test_metrics_open_on_loopback_token_elsewhere(world: World) -> None:
    view = AccessView.build(world.registry, ENV)
    assert authorize(view, Route.METRICS, None, "127.0.0.1") is None
    assert authorize(view, Route.METRICS, METRICS_TOKEN, "10.0.0.1") is None
    with pytest.raises(errors.MissingKey):
        authorize(view, Route.METRICS, None, "10.0.0.1")
    with pytest.raises(errors.InvalidKey):
        authorize(view, Route.METRICS, world.keys["acme"], "10.0.0.1")
    with pytest.raises(errors.MissingKey):  # no metrics token configured: loopback only
        authorize(AccessView.build(world.registry, {}), Route.METRICS, None, "10.0.0.1")
