"""SQL of the live stream's reads (pm.stream_fetch never skips an event still in flight; its
typed events, coalesced prices and asset filter: tests/sql/test_stream_events.py) and of the
scoped API keys."""
from __future__ import annotations

import hashlib
import json
import time


from app.db import q
from tests.sql.calls import call, fill, sqlstate_of


def fetch(db, after, hold=None, limit=500, grace=10):
    (result,) = db.execute(q("extras_stream_fetch"), {"after": after, "limit": limit, "hold": json.dumps(hold) if hold else None,
                                                       "grace": grace, "assets": None}).fetchone()
    return result


def fetch_until_settled(db, after, hold, deadline_seconds=30):
    """Holds end when every transaction running (anywhere in the cluster) when the gap was seen
    has ended: other sessions of a shared server may take a moment, so poll with a deadline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = fetch(db, after, hold, grace=3600)
        if result["hold"] is None or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def versions(result):
    return [(e["data"]["asset"], e["data"]["version"]) for e in result["events"]]


def test_fetch_returns_position_events_in_id_order_and_skips_other_rows(db):
    head = call(db, "extras_stream_head")
    fill(db, "BTCUSDT", "Buy", "1", "100")
    db.execute(q("api_snapshot_position"), {"asset": "BTCUSDT", "mode": "one-way", "trace": None})  # not a position_updated row
    fill(db, "BTCUSDT", "Buy", "1", "100")
    result = fetch(db, head)
    assert versions(result) == [("BTCUSDT", 1), ("BTCUSDT", 2)]
    assert result["cursor"] == call(db, "extras_stream_head") and result["hold"] is None
    assert [e["id"] for e in result["events"]] == sorted(e["id"] for e in result["events"])
    page = fetch(db, head, limit=1)
    assert versions(page) == [("BTCUSDT", 1)] and page["cursor"] == page["events"][0]["id"]
    assert fetch(db, result["cursor"])["events"] == []


def test_an_event_committed_late_with_a_lower_id_is_not_skipped(db, connect):
    head = call(db, "extras_stream_head")
    slow = connect()                                   # a transaction: takes an id, commits later
    fill(slow, "ETHUSDT", "Buy", "1", "100")
    fill(db, "BTCUSDT", "Buy", "1", "100")             # a higher id, committed first
    held = fetch(db, head)
    assert held["events"] == [] and held["cursor"] == head and held["hold"] is not None
    again = fetch(db, held["cursor"], held["hold"])    # the writer is still in flight
    assert again["events"] == [] and again["hold"] == held["hold"]
    slow.commit()
    result = fetch_until_settled(db, again["cursor"], again["hold"])
    assert versions(result) == [("ETHUSDT", 1), ("BTCUSDT", 1)] and result["hold"] is None


def test_a_rolled_back_gap_is_passed_once_its_writer_has_ended(db, connect):
    head = call(db, "extras_stream_head")
    failed = connect()
    fill(failed, "ETHUSDT", "Buy", "1", "100")
    fill(db, "BTCUSDT", "Buy", "1", "100")
    held = fetch(db, head)
    assert held["events"] == [] and held["hold"] is not None
    failed.rollback()
    result = fetch_until_settled(db, held["cursor"], held["hold"])
    assert versions(result) == [("BTCUSDT", 1)] and result["hold"] is None


def test_a_hold_is_given_up_after_the_grace_period(db, connect):
    head = call(db, "extras_stream_head")
    idle = connect()
    fill(idle, "ETHUSDT", "Buy", "1", "100")           # idle in transaction, never ends during the test
    fill(db, "BTCUSDT", "Buy", "1", "100")
    held = fetch(db, head)
    assert fetch(db, held["cursor"], held["hold"], grace=3600)["events"] == []
    assert versions(fetch(db, held["cursor"], held["hold"], grace=0)) == [("BTCUSDT", 1)]
    idle.rollback()


def test_fetch_rejects_bad_arguments(db):
    assert sqlstate_of(db, "extras_stream_fetch", after=-1, limit=1, hold=None, grace=1, assets=None)[0] == "22023"
    assert sqlstate_of(db, "extras_stream_fetch", after=0, limit=0, hold=None, grace=1, assets=None)[0] == "22023"


# ------------------------------------------------------------------ API keys

def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(db, name, key, scope="read", rate_limit=None):
    return call(db, "extras_api_key_create", name=name, key_hash=digest(key), scope=scope, rate_limit=rate_limit)


def lookup(db, key):
    return db.execute(q("extras_api_key_lookup"), {"key_hash": digest(key)}).fetchone()


def test_keys_create_lookup_list_revoke(db):
    created = create(db, "dashboard", "k1", "read", 30)
    assert (created["name"], created["scope"], created["rate_limit"], created["revoked_at"]) == ("dashboard", "read", 30, None)
    assert created["key_prefix"] == digest("k1")[:8]
    create(db, "ops", "k2", "admin")
    assert lookup(db, "k1") == ("dashboard", "read", 30)
    assert lookup(db, "k2") == ("ops", "admin", None)
    assert lookup(db, "nope") == (None, None, None)
    listed = call(db, "extras_api_key_list", include_revoked=False)["keys"]
    assert [k["name"] for k in listed] == ["dashboard", "ops"]
    assert all(digest("k1") not in json.dumps(k) for k in listed)
    revoked = call(db, "extras_api_key_revoke", name="dashboard")
    assert revoked["revoked_at"] is not None
    assert lookup(db, "k1") == (None, None, None)
    assert sqlstate_of(db, "extras_api_key_revoke", name="dashboard")[0] == "P0002"
    create(db, "dashboard", "k3", "write")           # the name is free again
    assert lookup(db, "k3") == ("dashboard", "write", None)
    assert len(call(db, "extras_api_key_list", include_revoked=True)["keys"]) == 3
    # the table holds digests only
    assert db.execute("SELECT count(*) FROM pm.api_keys WHERE key_hash IN ('k1', 'k2', 'k3')").fetchone()[0] == 0


def test_key_errors(db):
    create(db, "ops", "k1", "admin")
    state, message = sqlstate_of(db, "extras_api_key_create", name="ops", key_hash=digest("k2"), scope="read", rate_limit=None)
    assert state == "23505" and "ops" in message
    for name, key_hash, scope, rate_limit, field in (
            ("bad name", digest("x"), "read", None, "name"), ("", digest("x"), "read", None, "name"),
            ("a", digest("x"), "root", None, "scope"), ("a", digest("x"), "read", 0, "rate_limit"),
            ("a", "k1", "read", None, "key_hash")):
        state, message = sqlstate_of(db, "extras_api_key_create", name=name, key_hash=key_hash, scope=scope, rate_limit=rate_limit)
        assert state == "22023" and f"invalid field {field}" in message
