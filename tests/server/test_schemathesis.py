"""Property-based fuzzing of the server against its own OpenAPI schema: no input may give a 500.

Schemathesis generates requests from ``/openapi.json`` (random multipart bodies, out-of-range numbers,
bad enums, random job ids) and sends them to the app in-process. Bounded: a few dozen examples per
operation, so it takes seconds on the tiny model.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the [test] extra")

from hypothesis import HealthCheck, settings  # noqa: E402

from .conftest import wait_ready  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from fastapi.testclient import TestClient

    from mendicant_desktop.server.app import create_app
    from mendicant_desktop.server.config import ServerConfig
    from tests.support.tiny_model import build_tiny_bundle

    card = build_tiny_bundle(tmp_path_factory.mktemp("fuzz_model"))
    app = create_app(ServerConfig(model=str(card), rate_limit_per_minute=100_000, max_jobs=10_000))
    with TestClient(app) as client:  # load the model once; schemathesis then reuses the started app
        wait_ready(client)
    return app


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_input_gives_a_server_error(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert "error" in response.json(), response.text[:500]
