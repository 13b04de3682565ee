"""/openapi.yaml is kept true by schemathesis: generated valid and invalid requests for every
operation against the WSGI app on a database with positions; no 5xx, every response conforms to
the document (status, content type, headers, body schema), invalid input is rejected with 4xx."""
from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from schemathesis.core.failures import FailureGroup
from schemathesis.openapi.checks import RejectedPositiveData

from tests.api.conftest import API_KEY
from tests.sql.calls import fill, set_prices

# Small on purpose (the run stays around 10 s on the shared 2-core machine); raise it with
# PM_SCHEMATHESIS_EXAMPLES=500 for a deeper search.
MAX_EXAMPLES = int(os.environ.get("PM_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture
def app(make_app, api_settings, db):
    fill(db, "BTCUSDT", "Buy", "1.5", "50000")
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    fill(db, "XRPUSDT", "Buy", "100", "0.5", mode="hedge", position_idx=1)
    set_prices(db, {"BTCUSDT": "50100", "ETHUSDT": "2900"})
    return make_app(api_settings.with_overrides(rate_limit_enabled=False))


# the extras routes (app/api/extras/, tests/api/extras/): documented here too, so the fuzzing covers them
EXTRAS_OPERATIONS = {
    "PATCH /api/v1/positions/{asset}", "POST /api/v1/positions/{asset}/close", "GET /api/v1/positions/{asset}/history",
    "POST /api/v1/prices", "GET /api/v1/portfolio/summary", "GET /api/v1/api-keys", "POST /api/v1/api-keys",
    "DELETE /api/v1/api-keys/{name}", "GET /api/v1/stream", "POST /api/v1/positions",
    "DELETE /api/v1/positions/{asset}", "POST /api/v1/positions/bulk-update"}
# An SSE stream only ends after POSITION_MANAGER_STREAM_MAX_SECONDS: covered over real HTTP by
# tests/api/extras/test_stream.py instead.
NOT_FUZZED = {"GET /api/v1/stream"}
# OpenAPI 3.0 cannot constrain the property names of an object (propertyNames is 3.1): a body
# {"": "1"} is schema-valid, yet "" is no symbol (400 naming it). Every other check still runs.
NOT_ACCEPTANCE_CHECKED = {"POST /api/v1/prices"}


def operations(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.yaml", app)
    schema.config.generation.update(max_examples=MAX_EXAMPLES, codec="ascii", allow_x00=False,
                                     # the key is sent by the test; its absence is covered by test_http.py
                                     with_security_parameters=False)
    # a well-formed If-Match naming another version is a valid request answered 412
    acceptance = schema.config.checks.positive_data_acceptance
    acceptance.expected_statuses = [*acceptance.expected_statuses, "412"]
    return [result.ok() for result in schema.get_all_operations()]


def test_document_covers_every_route(app):
    labels = {op.label for op in operations(app)}  # schemathesis leaves out the document's own path
    assert labels == {
        "GET /health", "GET /metrics", "GET /docs", "GET /api/v1/positions", "GET /api/v1/positions/{asset}",
        "POST /api/v1/positions/{asset}/validate", "POST /api/v1/positions/{asset}/snapshot",
        "GET /api/v1/positions/{asset}/snapshots", "GET /api/v1/portfolio", "GET /api/v1/portfolio/exposure",
        "GET /api/v1/portfolio/pnl"} | EXTRAS_OPERATIONS


# schemathesis' own pytest integration (schema.parametrize / from_fixture) does not run under the
# pytest of this project, so the generated cases are driven with hypothesis directly, per operation.
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(app, mode):
    for operation in operations(app):
        if operation.label in NOT_FUZZED:
            continue
        has_parameters = any(len(part) for part in (operation.path_parameters, operation.query, operation.headers))
        if mode is schemathesis.GenerationMode.NEGATIVE and not has_parameters:
            continue  # nothing to make invalid (the key itself is covered by test_http.py)

        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
        def check(case):
            try:
                case.call_and_validate(headers={"X-API-Key": API_KEY})
            except FailureGroup as failures:
                if operation.label not in NOT_ACCEPTANCE_CHECKED or not all(
                        isinstance(f, RejectedPositiveData) and f.status_code == 400 for f in failures.exceptions):
                    raise

        try:
            check()
        except Exception as exc:  # name the operation in the failure
            raise AssertionError(f"{operation.label} ({mode.value}): {exc}") from exc
