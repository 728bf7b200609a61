"""Property-based requests generated from the OpenAPI schema (schemathesis): whatever a
client sends, the API answers without a 5xx and in the one error shape."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from identity.api import create_app
from identity.api.app import _warm
from identity.store.keys import create_key


@pytest.fixture(scope="module")
def schema_app(pg_server, model_settings, tmp_path_factory):
    url = pg_server.new_database("schema")
    app = create_app(model_settings.replace(
        database_url=url, data_dir=tmp_path_factory.mktemp("schema-data"),
        allowed_roots=[tmp_path_factory.mktemp("schema-root")],
    ), warm=False)
    _warm(app)  # as the lifespan would, but before the first request: /readyz must say 200
    yield app
    app.state.service.close()
    pg_server.drop_database(url)


@pytest.fixture(scope="module")
def admin_key(schema_app) -> str:
    return create_key(schema_app.state.service.store, "schemathesis", ["admin"])[1]


@pytest.fixture(scope="module")
def api_schema(schema_app):
    return schemathesis.openapi.from_asgi("/openapi.json", schema_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_server_fail(case, admin_key):
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {admin_key}"}
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
