"""Fuzz the sidecar's admin API from its own OpenAPI schema (schemathesis): no 5xx, no crash.

The sidecar is real (uvicorn in a thread) and talks to the real secured engine with the admin token. Its registry is
a separate file holding only a ``fuzz`` tenant, so generated offboard calls can never unload the other tests'
adapters; the package's conftest runs it last all the same (its POST /admin/reconcile unloads what its registry lacks).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tenantserve.registry.schema import Registry, TenantSpec
from tests.integration.security.conftest import ADMIN_TOKEN, SecuredEngine
from tests.sidecar.serving import SidecarThread


@pytest.fixture(scope="module")
def sidecar_url(secured: SecuredEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("fuzz") / "adapters.yaml"
    reg = Registry.load(secured.registry_path, check_paths=False)
    reg.tenants = [TenantSpec(id="fuzz")]
    reg.save(path)
    with SidecarThread(path, secured.url, reconcile=False, admin_token=ADMIN_TOKEN,
                       adapters_root=Path(path).parent) as sidecar:
        yield sidecar.url


def _operations(url: str) -> list:  # type: ignore[type-arg]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(url: str, examples: int, check) -> list[str]:  # type: ignore[no-untyped-def]
    """Run ``check(case)`` on generated cases of every operation (schemathesis' pytest plugin does not load
    with this pytest, so Hypothesis is driven directly). Returns the operations fuzzed."""
    done = []
    for operation in _operations(url):
        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            check(case)

        run()
        done.append(f"{operation.method.upper()} {operation.path}")
    return done


def test_admin_api_never_answers_5xx(sidecar_url: str) -> None:
    def check(case) -> None:  # type: ignore[no-untyped-def]
        case.call_and_validate(base_url=sidecar_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                               checks=[not_a_server_error], timeout=60)

    fuzzed = _fuzz(sidecar_url, 15, check)
    assert any("keys" in op for op in fuzzed) and any("adapters" in op for op in fuzzed), fuzzed


def test_admin_api_without_the_token_is_refused(sidecar_url: str) -> None:
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(base_url=sidecar_url, timeout=60)
        assert response.status_code in (401, 403), (case.method, case.formatted_path, response.text)

    _fuzz(sidecar_url, 5, check)
