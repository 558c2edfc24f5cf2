"""Schemathesis against /api/v1/openapi.json: generated requests never get a 5xx, on
SQLite and PostgreSQL (NUL bytes, huge numbers, odd unicode and the like)."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from services.settings import Settings
from tracker.store import Store
from tracker.web.app import create_app

pytestmark = pytest.mark.integration

# The document alone (an in-memory store); the requests go to `fuzz_app` on each backend.
_doc_app = create_app(Settings(database_url="sqlite://"), store=Store("sqlite://"))
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _doc_app)


@pytest.fixture(scope="module")
def fuzz_app(module_db_url, module_store, tmp_path_factory):
    app = create_app(Settings(database_url=module_db_url, allowed_video_dirs=(tmp_path_factory.mktemp("v"),)),
                     store=module_store)
    app.test_client().post("/api/v1/jobs", json={  # one real job besides the generated uids
        "source": "synthetic://64x48@10/20",
        "stages": [{"name": "det", "service": "person_detection", "inputs": {"image": "generator.image"}}],
    })
    return app


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_no_server_errors(case, fuzz_app):
    response = case.call(app=fuzz_app)
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        assert "error" in response.json(), f"{where}: {response.text[:500]}"
