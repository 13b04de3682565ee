"""Cross-cutting HTTP behaviour: auth on every route but /health and /openapi.yaml, error bodies,
405, X-Trace-Id, JSON access logs, /health, /openapi.yaml, and the rate limit in one process."""
from __future__ import annotations

import io
import json
import logging
import time

import pytest
import yaml
from falcon import testing

from app import logs, schema
from app.api import access
from app.api.health import BrokerProbe
from app.api.keys import digest
from tests.api.conftest import API_KEY
from bench.common import free_port
from tests.sql.calls import fill

ROUTES = [
    ("GET", "/api/v1/positions"),
    ("GET", "/api/v1/positions/BTCUSDT"),
    ("POST", "/api/v1/positions/BTCUSDT/validate"),
    ("POST", "/api/v1/positions/BTCUSDT/snapshot"),
    ("GET", "/api/v1/positions/BTCUSDT/snapshots"),
    ("GET", "/api/v1/portfolio"),
    ("GET", "/api/v1/portfolio/exposure"),
    ("GET", "/api/v1/portfolio/pnl"),
]


@pytest.fixture
def btc(db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("key", [None, "", "wrong-key", API_KEY + "x", API_KEY[:-1]])
def test_every_api_route_needs_a_valid_key(client, btc, method, path, key):
    if key is None:  # no header at all (the fixture's client sends the valid key by default)
        response = testing.TestClient(client.app).simulate_request(method, path)
    else:
        response = client.simulate_request(method, path, headers={"X-API-Key": key})
    assert response.status_code == 401
    assert response.json["error_code"] == "unauthorized"
    assert response.json["trace_id"] == response.headers["x-trace-id"]


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_api_route_accepts_the_main_key_and_a_stored_admin_key(client, btc, stored_key, method, path):
    for key in (API_KEY, stored_key("ops", "admin")):
        response = client.simulate_request(method, path, headers={"X-API-Key": key})
        assert response.status_code in (200, 201), (path, response.text)


def test_a_key_named_only_in_the_overrides_is_refused(make_client, api_settings, stored_key):
    stored = stored_key("risk-manager", "read")
    settings = api_settings.with_overrides(rate_limit_overrides={"ui-key": 1000, stored: 5})
    client = make_client(settings)
    refused = client.simulate_get("/api/v1/positions", headers={"X-API-Key": "ui-key"})
    assert refused.status_code == 401 and refused.json["error_code"] == "unauthorized"
    # an override of an accepted key sets its limit, and that is all it does
    allowed = client.simulate_get("/api/v1/positions", headers={"X-API-Key": stored})
    assert allowed.status_code == 200 and allowed.headers["x-ratelimit-limit"] == "5"


def test_health_and_openapi_need_no_key(client):
    for path in ("/health", "/openapi.yaml"):
        response = client.simulate_get(path, headers={"X-API-Key": ""})
        assert response.status_code == 200, path


def test_health_reports_database_queue_and_counters(make_client, api_settings, btc):
    up = make_client(api_settings).simulate_get("/health").json
    assert up["status"] == "healthy" and up["service"] == api_settings.service_name
    assert up["database_connected"] is True and up["queue_connected"] is True
    assert up["positions_count"] == 1
    assert up["timestamp"].endswith("Z")
    assert "counters" in up and "outbox_pending" in up
    assert up["schema"]["version"] == up["schema"]["expected"] == schema.expected()["version"]
    assert up["schema"]["up_to_date"] is True
    # RabbitMQ unreachable (a closed port): degraded, still 200
    closed = BrokerProbe("127.0.0.1", free_port(), timeout=0.2)
    degraded = make_client(api_settings, broker=closed).simulate_get("/health")
    assert degraded.status_code == 200
    assert degraded.json["status"] == "degraded" and degraded.json["queue_connected"] is False
    assert degraded.json["database_connected"] is True


def test_health_shows_the_ws_gateway_subscription(make_client, api_settings, db):
    off = make_client(api_settings).simulate_get("/health").json
    assert off["ws_gateway"] == {"enabled": False} and off["status"] == "healthy"
    configured = api_settings.with_overrides(ws_gateway_host="ws-gateway", ws_gateway_api_key="k")
    client = make_client(configured)
    pending = client.simulate_get("/health").json       # the consumer has not tried yet
    assert pending["ws_gateway"] == {"enabled": True, "subscribed": None} and pending["status"] == "healthy"
    db.execute("SELECT pm.record_subscription('ws-gateway', 'position', false, 'HTTP 401: bad key')")
    failing = client.simulate_get("/health")
    assert failing.status_code == 200 and failing.json["status"] == "degraded"
    ws = failing.json["ws_gateway"]
    assert (ws["subscribed"], ws["last_status"], ws["failures"], ws["last_success_at"]) == (False, "HTTP 401: bad key", 1, None)
    db.execute("SELECT pm.record_subscription('ws-gateway', 'position', true, 'HTTP 409 (exists already)')")
    ok = client.simulate_get("/health").json
    assert ok["status"] == "healthy" and ok["ws_gateway"]["subscribed"] is True and ok["ws_gateway"]["failures"] == 0
    assert ok["ws_gateway"]["last_attempt_at"].endswith("Z") and ok["ws_gateway"]["seconds_since_attempt"] >= 0


def test_broker_probe_is_cached():
    port = free_port()
    probe = BrokerProbe("127.0.0.1", port, ttl=60, timeout=0.2)
    assert probe.reachable() is False
    import socket
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        assert probe.reachable() is False   # cached answer
        probe._checked_at = float("-inf")   # expire the cache
        assert probe.reachable() is True


def test_openapi_document_lists_every_route(client):
    response = client.simulate_get("/openapi.yaml")
    assert response.headers["content-type"].startswith("application/yaml")
    document = yaml.safe_load(response.text)
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for method, path in ROUTES:
        template = path.replace("BTCUSDT", "{asset}")
        assert method.lower() in paths[template], template
    assert "/health" in paths and "/openapi.yaml" in paths


def test_wrong_method_is_405_json(client, btc):
    for method, path in [("PUT", "/api/v1/positions/BTCUSDT"), ("POST", "/api/v1/portfolio"),
                         ("GET", "/api/v1/positions/BTCUSDT/validate"), ("PUT", "/api/v1/positions")]:
        response = client.simulate_request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.json["error_code"] == "method_not_allowed"
        assert "allow" in response.headers


def test_unknown_route_is_404_json(client):
    response = client.simulate_get("/api/v1/nothing")
    assert response.status_code == 404
    assert response.json["error_code"] == "not_found"


def test_trace_id_is_echoed_or_generated(client):
    echoed = client.simulate_get("/api/v1/positions", headers={"X-Trace-Id": "abc-123"})
    assert echoed.headers["x-trace-id"] == "abc-123"
    generated = client.simulate_get("/api/v1/positions")
    other = client.simulate_get("/api/v1/positions")
    assert len(generated.headers["x-trace-id"]) == 32
    assert generated.headers["x-trace-id"] != other.headers["x-trace-id"]
    # something unfit for logs is replaced, not echoed
    hostile = client.simulate_get("/api/v1/positions", headers={"X-Trace-Id": "a b\tc" + "x" * 300})
    assert hostile.headers["x-trace-id"] != "a b\tc" + "x" * 300
    # on errors too, in the header and the body
    error = client.simulate_get("/api/v1/positions", params={"limit": "x"}, headers={"X-Trace-Id": "err-1"})
    assert error.headers["x-trace-id"] == "err-1" and error.json["trace_id"] == "err-1"
    unauthorized = client.simulate_get("/api/v1/positions", headers={"X-API-Key": "", "X-Trace-Id": "auth-1"})
    assert unauthorized.json["trace_id"] == "auth-1"


def test_json_access_log_line_per_request(client):
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("position-manager-test", "INFO", stream=stream)
    try:
        client.simulate_get("/api/v1/positions", headers={"X-Trace-Id": "log-1"})
        client.simulate_get("/api/v1/positions/NOPEUSDT", headers={"X-Trace-Id": "log-2"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line.get("logger") == "position_manager.api.access"]
    assert [(a["trace_id"], a["status"]) for a in access] == [("log-1", 200), ("log-2", 404)]
    for line in access:
        assert line["service"] == "position-manager-test" and line["level"] == "INFO"
        assert line["method"] == "GET" and line["path"].startswith("/api/v1/positions")
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_rate_limit_in_one_process(make_client, api_settings, stored_key):
    other_key = stored_key("other", "read")
    limited = api_settings.with_overrides(rate_limit_default=3, rate_limit_overrides={other_key: 5})
    client = make_client(limited)
    responses = [client.simulate_get("/api/v1/positions") for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0", "0"]
    rejected = client.simulate_get("/api/v1/positions")
    assert rejected.json["error_code"] == "rate_limited"
    assert 1 <= int(rejected.headers["retry-after"]) <= 20  # one token every 20 s at 3/min
    assert rejected.headers["x-ratelimit-limit"] == "3"
    # another key has its own bucket (its override)
    other = [client.simulate_get("/api/v1/positions", headers={"X-API-Key": other_key}).status_code for _ in range(6)]
    assert other == [200] * 5 + [429]
    # the single-position read admits in its own statement: the same bucket, the same headers
    single = client.simulate_get("/api/v1/positions/BTCUSDT")
    assert single.status_code == 429 and single.headers["x-ratelimit-remaining"] == "0"
    # /health is not limited
    assert client.simulate_get("/health").status_code == 200


def _taken(db, key: str):
    """How many tokens the last take of the key's bucket took (pm.api_rate_state.taken)."""
    return db.execute("SELECT taken FROM pm.api_rate_state WHERE key_hash = %s", (digest(key),)).fetchone()[0]


def test_a_fast_key_leases_tokens_and_its_limit_still_holds(make_client, api_settings, db):
    """A key limited to LEASE_MIN_LIMIT per minute: its process takes tokens several at a time (the
    bucket records takes of more than one), yet a burst gets no more through than the bucket holds
    plus its refill (100 a second) over the burst and one lease's lifetime, and near the bucket's end
    every request takes its own token again (the last take before the refusal took one)."""
    limit = access.LEASE_MIN_LIMIT
    client = make_client(api_settings.with_overrides(rate_limit_default=limit))
    started = time.monotonic()
    statuses = []
    while len(statuses) < 2 * limit and (not statuses or statuses[-1] == 200):
        statuses.append(client.simulate_get("/api/v1/portfolio").status_code)
        if len(statuses) == 50:
            assert _taken(db, API_KEY) > 1   # a lease
    elapsed = time.monotonic() - started
    admitted = statuses.count(200)
    assert statuses[-1] == 429 and statuses[:-1] == [200] * admitted
    assert limit <= admitted <= limit + (elapsed + access.LEASE_SECONDS) * limit / 60
    assert _taken(db, API_KEY) == 1


def test_leases_can_be_turned_off_and_slow_keys_never_lease(make_client, api_settings, db, stored_key):
    slow = stored_key("slow", "read", rate_limit=access.LEASE_MIN_LIMIT - 1)
    limit = access.LEASE_MIN_LIMIT
    client = make_client(api_settings.with_overrides(rate_limit_default=limit, rate_limit_lease=1))
    seen = []
    for _ in range(20):
        remaining = int(client.simulate_get("/api/v1/portfolio").headers["x-ratelimit-remaining"])
        seen.append((remaining, _taken(db, API_KEY)))
    assert [taken for _, taken in seen] == [1] * 20        # every request took one token of the bucket
    # so the bucket fell by at most one a request (it refills 100 a second meanwhile: not exactly one)
    assert all(limit - 1 - i <= remaining <= limit - 1 for i, (remaining, _) in enumerate(seen)), seen
    client = make_client(api_settings)
    for _ in range(20):
        assert client.simulate_get("/api/v1/portfolio", headers={"X-API-Key": slow}).status_code == 200
    assert _taken(db, slow) == 1


def test_a_process_leases_at_its_own_rate_and_gives_back_what_lapsed():
    fast = access.LEASE_MIN_LIMIT
    leases = access.TokenLeases(most=32)
    assert leases.want("k") == 1                       # nothing known of the key: one token
    for _ in range(100):                               # 100 requests admitted one token each, at once
        leases.keep("k", 1, 1, fast, 5000)
    asked = leases.want("k")
    assert asked == 32                                 # at that rate a lease, at most `most`
    assert leases.want("k") == 1                       # one lease at a time: meanwhile single tokens
    assert leases.keep("k", asked, 3, fast, 4990) == 4992   # this request spends one, two are held
    assert leases.spend("k") == (fast, 4991)
    time.sleep(access.LEASE_SECONDS * 1.5)
    assert leases.spend("k") is None                   # the other one lapsed ...
    assert leases.lapsed("k") == (1, fast)             # ... and is given back, once
    assert leases.lapsed("k") == (0, 0)
    for _ in range(100):
        leases.keep("k", 1, 1, fast, 40)
    assert leases.want("k") == 40 // access.LEASE_SHARE    # at most a share of what the bucket holds
    leases.keep("k", 5, 1, fast, 10)
    assert leases.want("k") == 1                       # near its end: one token per request
    for _ in range(100):
        leases.keep("s", 1, 1, fast - 1, 5000)
    assert leases.want("s") == 1                       # a slower key: never a lease


def test_rate_limit_can_be_disabled(make_client, api_settings):
    client = make_client(api_settings.with_overrides(rate_limit_enabled=False, rate_limit_default=1))
    assert [client.simulate_get("/api/v1/positions").status_code for _ in range(3)] == [200, 200, 200]


def test_a_rejected_request_does_nothing(make_client, api_settings, db, btc):
    client = make_client(api_settings.with_overrides(rate_limit_default=1))
    assert client.simulate_post("/api/v1/positions/BTCUSDT/snapshot").status_code == 201
    rejected = client.simulate_post("/api/v1/positions/BTCUSDT/snapshot")
    assert rejected.status_code == 429
    assert db.execute("SELECT count(*) FROM public.position_snapshots").fetchone() == (1,)
