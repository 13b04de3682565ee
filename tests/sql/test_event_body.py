"""What subscribers get in position_updated (pm.event_body through pm.outbox_claim and
pm.stream_fetch): the Position after the change, avg_price (= average_entry_price, the name
model-service reads), and the operator metadata as they are at publication. The audit history
keeps the state as of the change."""
from __future__ import annotations

import json

import psycopg
import pytest

from app.db import q

from tests.sql.helpers import exec_a, hedge_a, apply_order, messages


def patch(db, asset, body, mode="one-way"):
    return db.execute("SELECT pm.update_position_meta(%s, %s, %s::jsonb, NULL, 't', 'test')",
                      (asset, mode, json.dumps(body))).fetchone()[0]


def test_avg_price_mirrors_the_average_entry_price(db):
    apply_order(db, exec_a("e1", "Buy", "1", "100"))
    apply_order(db, exec_a("e2", "Buy", "3", "120", minute=1))
    apply_order(db, exec_a("e3", "Sell", "4", "130", minute=2))
    bodies = [m["payload"] for m in messages(db)]
    assert [(b["avg_price"], b["average_entry_price"]) for b in bodies] == [("100", "100"), ("115", "115"), (None, None)]


def test_hedge_positions_have_the_leg_averages_and_no_single_average(db):
    apply_order(db, hedge_a("h1", 1, "Buy", "1", "100"))
    (body,) = [m["payload"] for m in messages(db)]
    assert body["long_avg_price"] == "100" and body["avg_price"] == body["average_entry_price"]


def test_metadata_as_at_publication_and_nulls_without_any(db):
    apply_order(db, exec_a("e1", "Buy", "1", "100"))
    apply_order(db, exec_a("o1", "Sell", "1", "10", asset="ETHUSDT"))
    patch(db, "BTCUSDT", {"stop_loss": "95.5", "strategy": "breakout"})
    events = messages(db)
    btc = [m["payload"] for m in events if m["payload"]["asset"] == "BTCUSDT"]
    assert len(btc) == 2     # the fill and the metadata change, both with today's metadata
    assert {(b["stop_loss"], b["take_profit"], b["strategy"], b["notes"]) for b in btc} == {("95.5", None, "breakout", None)}
    (eth,) = [m["payload"] for m in events if m["payload"]["asset"] == "ETHUSDT"]
    assert (eth["stop_loss"], eth["take_profit"], eth["strategy"], eth["notes"]) == (None, None, None, None)
    # the history of the position is the state as of each change: no metadata from later
    history = db.execute("SELECT pm.position_history('BTCUSDT', 'one-way', 10, 0)").fetchone()[0]["history"]
    first = history[-1]["position"]
    assert first["version"] == 1 and first["stop_loss"] is None and "avg_price" not in first


def test_the_live_stream_carries_the_same_body(db):
    apply_order(db, exec_a("e1", "Buy", "2", "50"))
    patch(db, "BTCUSDT", {"take_profit": "70", "notes": "watch"})
    (fetched,) = db.execute(q("extras_stream_fetch"), {"after": 0, "limit": 100, "hold": None, "grace": 3600,
                                                        "assets": None}).fetchone()
    streamed = [e["data"] for e in fetched["events"]]
    claimed = [m["payload"] for m in messages(db)]
    assert [s["event_id"] for s in streamed] == [c["event_id"] for c in claimed]
    for one, published in zip(streamed, claimed):
        assert {k: v for k, v in one.items() if k != "event_type"} == {
            k: v for k, v in published.items() if k != "event_type"}
        assert (one["avg_price"], one["take_profit"], one["notes"]) == ("50", "70", "watch")


def test_the_outbox_takes_only_our_event_types_and_only_rows_with_a_body(db):
    """outbox_row_check (one CHECK for both rules, so that each insert prepares one expression):
    an event type this service does not publish, or a row with neither payload nor image, is
    refused; the rows the service writes pass."""
    insert = "INSERT INTO pm.outbox (event_type, payload) VALUES (%s, %s::jsonb) RETURNING id"
    for event_type in ("position_updated", "portfolio_updated", "position_snapshot_created"):
        assert db.execute(insert, (event_type, "{}")).fetchone()[0] is not None
    for event_type, payload in (("position_closed", "{}"), ("", "{}"), ("position_updated", None)):
        with pytest.raises(psycopg.errors.CheckViolation, match="outbox_row_check"):
            db.execute(insert, (event_type, payload))
    assert db.execute("SELECT count(*) FROM pm.outbox").fetchone()[0] == 3
