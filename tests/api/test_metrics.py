"""GET /metrics without a key: JSON by default (what ytrader's dashboards read), the Prometheus
exposition formats when Accept asks for them; the API's own counters and histograms, and the
service's figures from the database (consumer roles' heartbeats, outbox, dead letters, foreign
writes). /health's consumers: alive per role from the heartbeats, degraded when one is not."""
from __future__ import annotations

import json

import pytest
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

from app.figures import Figures
from app.api.health import BrokerProbe
from bench.common import free_port
from tests.api.conftest import API_KEY
from tests.sql.calls import fill

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def families(text: str) -> dict:
    """{sample name + sorted labels: value} of a text exposition (parsed by prometheus_client)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def beat(db, role: str, figures: Figures, instance: str | None = None) -> None:
    db.execute("SELECT pm.heartbeat(%s, %s, now(), %s::jsonb)", (role, instance or f"test:{role}", figures.as_json()))


@pytest.fixture
def anonymous(make_client, api_settings):
    """A client that sends no key at all, with every consumer role expected."""
    app = make_client(api_settings.with_overrides(health_roles=("order", "position", "relay"))).app
    return testing.TestClient(app)


def test_json_by_default_without_a_key(anonymous, db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    for accept in (None, "*/*", "application/json", "text/html,application/xhtml+xml,*/*;q=0.8"):
        response = anonymous.simulate_get("/metrics", headers={"Accept": accept} if accept else {})
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
        body = response.json
        assert body["database_connected"] is True and body["queue_connected"] is True
        assert body["timestamp"].endswith("Z") and body["positions_count"] == 1
        assert {"portfolio_cache_hit_rate", "outbox_pending", "outbox_oldest_pending_seconds", "dead_letters",
                "foreign_writes_24h", "counters", "consumers"} <= body.keys()
        assert set(body["consumers"]) == {"order", "position", "relay"}
        assert body["consumers"]["order"] == {"alive": False, "seconds_since_heartbeat": None, "instances": 0,
                                              "counters": {}, "gauges": {}}


def test_portfolio_cache_hit_rate_counts_hits_and_misses(make_client, api_settings, db):
    client = make_client(api_settings)
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    before = client.simulate_get("/metrics").json["portfolio_cache"]
    client.simulate_get("/api/v1/portfolio")                 # miss
    client.simulate_get("/api/v1/portfolio")                 # hit
    client.simulate_get("/api/v1/portfolio")                 # hit
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    client.simulate_get("/api/v1/portfolio")                 # miss: a position changed
    body = client.simulate_get("/metrics").json
    after = body["portfolio_cache"]
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (2, 2)
    assert body["portfolio_cache_hit_rate"] == round(after["hits"] / (after["hits"] + after["misses"]), 4)


def test_prometheus_text_and_openmetrics(make_client, api_settings, db):
    client = make_client(api_settings)
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    before = families(client.simulate_get("/metrics", headers={"Accept": "text/plain"}).text)
    client.simulate_get("/api/v1/positions/BTCUSDT")
    client.simulate_get("/api/v1/positions/ETHUSDT")         # 404
    client.simulate_get("/no/such/route")                     # 404 unmatched
    text = client.simulate_get("/metrics", headers={"Accept": "text/plain"})
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = families(text.text)
    route = "/api/v1/positions/{asset}"
    for status in ("200", "404"):
        count = "pm_api_request_duration_seconds_count"
        assert value(after, count, route=route, method="GET", status=status) - \
            value(before, count, route=route, method="GET", status=status) == 1
    assert value(after, "pm_api_request_duration_seconds_count", route="unmatched", method="GET", status="404") >= 1
    assert value(after, "pm_database_connected") == 1 and value(after, "pm_positions") == 1
    assert value(after, "pm_foreign_writes_total") == 0
    assert ("pm_service_events_total", (("name", "order_events_without_price"),)) in after
    # what Prometheus sends: OpenMetrics, ending with # EOF; no key or key name anywhere
    om = client.simulate_get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF") and "pm_api_request_duration_seconds_bucket" in om.text
    for secret in (API_KEY, "key-a", "X-API-Key"):
        assert secret not in om.text and secret not in text.text


def test_rate_limited_requests_are_counted(make_client, api_settings):
    client = make_client(api_settings.with_overrides(rate_limit_overrides={}, rate_limit_default=2))
    before = client.simulate_get("/metrics").json["api"]["rate_limited_requests"]
    statuses = [client.simulate_get("/api/v1/positions").status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    assert client.simulate_get("/metrics").json["api"]["rate_limited_requests"] - before == 2


def test_consumer_figures_from_the_heartbeats(make_client, api_settings, db):
    client = make_client(api_settings.with_overrides(health_roles=("order",)))
    order_a, order_b, relay = Figures(), Figures(), Figures()
    order_a.inc("messages", "applied", 10)
    order_a.inc("messages", "invalid")
    order_a.observe("batch_seconds", 0.003)
    order_a.gauge("lag_seconds", 2.5)
    order_a.gauge("queue_depth", 4)
    order_b.inc("messages", "applied", 5)
    order_b.observe("batch_seconds", 0.2)
    order_b.gauge("queue_depth", 9)
    relay.inc("published", "position_updated", 15)
    beat(db, "order", order_a, "host-a:1")
    beat(db, "order", order_b, "host-b:1")
    beat(db, "relay", relay)
    body = client.simulate_get("/metrics").json
    order = body["consumers"]["order"]
    assert order["alive"] is True and order["instances"] == 2
    assert order["counters"]["messages:applied"] == 15 and order["counters"]["batch_seconds_count"] == 2
    assert order["gauges"] == {"lag_seconds": 2.5, "queue_depth": 9}
    assert body["consumers"]["relay"]["counters"]["published:position_updated"] == 15

    samples = families(client.simulate_get("/metrics", headers={"Accept": "text/plain"}).text)
    assert value(samples, "pm_consumer_messages_total", role="order", status="applied") == 15
    assert value(samples, "pm_consumer_messages_total", role="order", status="invalid") == 1
    assert value(samples, "pm_consumer_batch_seconds_bucket", role="order", le="0.005") == 1
    assert value(samples, "pm_consumer_batch_seconds_bucket", role="order", le="+Inf") == 2
    assert value(samples, "pm_consumer_batch_seconds_sum", role="order") == pytest.approx(0.203)
    assert value(samples, "pm_consumer_lag_seconds", role="order") == 2.5
    assert value(samples, "pm_consumer_queue_depth", role="order") == 9
    assert value(samples, "pm_relay_events_published_total", role="relay", event_type="position_updated") == 15
    assert value(samples, "pm_role_alive", role="order") == 1 and value(samples, "pm_role_alive", role="position") == 0
    # a restarted process beats under a new name: the role's counters never go back
    db.execute("UPDATE pm.heartbeats SET beat_at = now() - interval '2 days' WHERE instance = 'host-b:1'")
    beat(db, "order", Figures(), "host-b:2")
    order = client.simulate_get("/metrics").json["consumers"]["order"]
    assert order["counters"]["messages:applied"] == 15 and order["instances"] == 2
    assert db.execute("SELECT count(*) FROM pm.heartbeats WHERE role = 'order'").fetchone()[0] == 3  # '' holds b:1


def test_metrics_answer_when_the_database_is_away(make_client, api_settings):
    client = testing.TestClient(make_client(api_settings.with_overrides(postgres_port=free_port())).app)
    body = client.simulate_get("/metrics")
    assert body.status_code == 200 and body.json["database_connected"] is False
    assert "consumers" not in body.json and "outbox_pending" not in body.json
    samples = families(client.simulate_get("/metrics", headers={"Accept": "text/plain"}).text)
    assert value(samples, "pm_database_connected") == 0


def test_health_consumers_alive_degraded_and_unhealthy(make_client, api_settings, db):
    roles = ("order", "position", "relay")
    client = make_client(api_settings.with_overrides(health_roles=roles))
    nobody = client.simulate_get("/health")
    assert nobody.status_code == 200 and nobody.json["status"] == "degraded"
    assert nobody.json["consumers"] == {r: {"alive": False, "seconds_since_heartbeat": None, "instances": 0}
                                        for r in roles}
    for role in roles:
        beat(db, role, Figures())
    up = client.simulate_get("/health").json
    assert up["status"] == "healthy" and all(c["alive"] and c["instances"] == 1 for c in up["consumers"].values())
    assert all(0 <= c["seconds_since_heartbeat"] < 5 for c in up["consumers"].values())
    assert up["foreign_writes_24h"] == 0 and up["counters"]["foreign_writes"] == 0
    # the relay stops beating: degraded, and says for how long
    db.execute("UPDATE pm.heartbeats SET beat_at = now() - interval '45 seconds' WHERE role = 'relay'")
    down = client.simulate_get("/health").json
    assert down["status"] == "degraded" and down["consumers"]["relay"]["alive"] is False
    assert 45 <= down["consumers"]["relay"]["seconds_since_heartbeat"] < 60
    assert down["consumers"]["order"]["alive"] is True
    # a longer timeout takes it as alive again (POSITION_MANAGER_HEARTBEAT_TIMEOUT reaches SQL as pm.heartbeat_timeout)
    patient = make_client(api_settings.with_overrides(health_roles=roles, heartbeat_timeout=120))
    assert patient.simulate_get("/health").json["status"] == "healthy"
    # only the database away is unhealthy
    away = make_client(api_settings.with_overrides(health_roles=roles, postgres_port=free_port()))
    assert away.simulate_get("/health").status_code == 503


def test_health_is_degraded_by_the_broker_not_by_unexpected_roles(make_client, api_settings, db):
    beat(db, "order", Figures())
    db.execute("UPDATE pm.heartbeats SET beat_at = now() - interval '1 hour'")
    alone = make_client(api_settings).simulate_get("/health").json     # no role expected
    assert alone["status"] == "healthy" and alone["consumers"] == {}
    closed = BrokerProbe("127.0.0.1", free_port(), timeout=0.2)
    assert make_client(api_settings, broker=closed).simulate_get("/health").json["status"] == "degraded"


def test_heartbeat_rejects_bad_figures(db):
    import psycopg
    for role, instance, figures in (("Order!", "h:1", "{}"), ("order", "", "{}"), ("order", "h:1", "[]"),
                                    ("order", "h:1", '{"counters": [1]}')):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            db.execute("SELECT pm.heartbeat(%s, %s, now(), %s::jsonb)", (role, instance, figures))
    assert db.execute("SELECT count(*) FROM pm.heartbeats").fetchone()[0] == 0
    db.execute("SELECT pm.heartbeat('order', 'h:1', now(), %s::jsonb)", (Figures().as_json(),))  # a fresh process
    assert json.loads(Figures().as_json()) == {"counters": {}, "gauges": {}}
