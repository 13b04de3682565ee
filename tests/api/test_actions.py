"""POST validate / snapshot and GET snapshots: parameters, results of the SQL core, 404."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.api.conftest import API_KEY
from tests.sql.calls import fill


@pytest.fixture
def btc(db):
    return fill(db, "BTCUSDT", "Buy", "1.5", "50000")


def test_validate_a_consistent_position(client, btc):
    response = client.simulate_post("/api/v1/positions/btcusdt/validate")
    assert response.status_code == 200
    body = response.json
    assert body["is_valid"] is True and body["discrepancies"] == []
    assert body["error_message"] is None and body["updated_position"] is None


def test_validate_reports_and_fixes_a_discrepancy(client, db, btc):
    # the stored row drifts from its ledger (as an outside write would make it)
    db.execute("UPDATE public.positions SET size = 2 WHERE asset = 'BTCUSDT'")
    report = client.simulate_post("/api/v1/positions/BTCUSDT/validate", params={"fix_discrepancies": "false"}).json
    assert report["is_valid"] is False
    assert any(d["field"] == "size" for d in report["discrepancies"])
    assert report["updated_position"] is None
    assert {"field", "stored", "expected", "source"} <= report["discrepancies"][0].keys()

    trace = "validate-fix-trace-1"
    fixed = client.simulate_post("/api/v1/positions/BTCUSDT/validate", params={"fix_discrepancies": "true"},
                                 headers={"X-Trace-Id": trace})
    assert fixed.status_code == 200
    assert fixed.json["updated_position"] is not None
    assert Decimal(fixed.json["updated_position"]["size"]) == Decimal("1.5")
    # the fix is audited with the request's trace id and a non-secret actor
    actor, trace_id = db.execute("SELECT actor, trace_id FROM pm.outbox WHERE action = 'fix' ORDER BY id DESC LIMIT 1"
                                 ).fetchone()
    assert trace_id == trace and actor.startswith("api:") and API_KEY not in actor
    again = client.simulate_post("/api/v1/positions/BTCUSDT/validate").json
    assert again["is_valid"] is True


def test_validate_and_snapshot_of_unknown_position_are_404(client):
    for path in ("/api/v1/positions/DOGEUSDT/validate", "/api/v1/positions/DOGEUSDT/snapshot"):
        response = client.simulate_post(path)
        assert response.status_code == 404, path
        assert response.json["error_code"] == "not_found"
    response = client.simulate_get("/api/v1/positions/DOGEUSDT/snapshots")
    assert response.status_code == 404


@pytest.mark.parametrize("query, parameter", [
    ({"fix_discrepancies": "maybe"}, "fix_discrepancies"),
    ({"fix_discrepancies": "TRUE1"}, "fix_discrepancies"),
    ({"mode": "x"}, "mode"),
])
def test_validate_rejects_bad_parameters(client, btc, query, parameter):
    response = client.simulate_post("/api/v1/positions/BTCUSDT/validate", params=query)
    assert response.status_code == 400
    assert f"parameter {parameter}" in response.json["message"]


def test_snapshot_is_201_and_listed_newest_first(client, db, btc):
    created = client.simulate_post("/api/v1/positions/BTCUSDT/snapshot", headers={"X-Trace-Id": "snap-1"})
    assert created.status_code == 201
    snap = created.json
    assert snap["asset"] == "BTCUSDT" and Decimal(snap["size"]) == Decimal("1.5")
    assert snap["snapshot_timestamp"].endswith("Z")
    fill(db, "BTCUSDT", "Buy", "0.5", "50000")
    second = client.simulate_post("/api/v1/positions/btcusdt/snapshot", params={"mode": "one-way"}).json
    listed = client.simulate_get("/api/v1/positions/BTCUSDT/snapshots").json
    assert listed["count"] == 2
    assert [s["id"] for s in listed["snapshots"]] == [second["id"], snap["id"]]
    assert Decimal(listed["snapshots"][0]["size"]) == 2
    # the event went to the outbox with the request's trace id
    (trace,) = db.execute("SELECT trace_id FROM pm.outbox WHERE event_type = 'position_snapshot_created' "
                          "ORDER BY id LIMIT 1").fetchone()
    assert trace == "snap-1"
    position = client.simulate_get("/api/v1/positions/BTCUSDT").json
    assert position["last_snapshot_at"] is not None


def test_snapshots_limit_offset_from_to(client, db, btc):
    ids = [client.simulate_post("/api/v1/positions/BTCUSDT/snapshot").json["id"] for _ in range(3)]
    # spread them in time: 3 h, 2 h, 1 h ago (oldest first)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for hours, snap_id in zip((3, 2, 1), ids):
        db.execute("UPDATE public.position_snapshots SET snapshot_timestamp = %s WHERE id = %s",
                   ((now - timedelta(hours=hours)).replace(tzinfo=None), snap_id))
    newest_first = list(reversed(ids))

    def listed(**query):
        response = client.simulate_get("/api/v1/positions/BTCUSDT/snapshots", params=query)
        assert response.status_code == 200, response.text
        return [s["id"] for s in response.json["snapshots"]]

    assert listed() == newest_first
    assert listed(limit="1") == newest_first[:1]
    assert listed(limit="2", offset="1") == newest_first[1:]
    iso = lambda dt: dt.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    assert listed(**{"from": iso(now - timedelta(hours=2))}) == newest_first[:2]
    assert listed(to=iso(now - timedelta(hours=2))) == newest_first[1:]
    assert listed(**{"from": iso(now - timedelta(hours=2, minutes=30)), "to": iso(now - timedelta(minutes=90))}) == [ids[1]]
    # an offset other than Z
    # an empty range is no error, just no snapshots
    assert listed(**{"from": iso(now), "to": iso(now - timedelta(hours=5))}) == []
    plus_two = (now - timedelta(hours=2)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert listed(**{"from": plus_two}) == newest_first[:2]


@pytest.mark.parametrize("query, parameter", [
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "-3"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"from": "yesterday"}, "from"),
    ({"from": "2025-13-01T00:00:00Z"}, "from"),
    ({"to": "2025-01-01"}, "to"),
    ({"to": "2025-01-01T00:00:00"}, "to"),
    ({"mode": "one_way"}, "mode"),
])
def test_snapshots_reject_bad_parameters(client, btc, query, parameter):
    response = client.simulate_get("/api/v1/positions/BTCUSDT/snapshots", params=query)
    assert response.status_code == 400, response.text
    assert f"parameter {parameter}" in response.json["message"]
