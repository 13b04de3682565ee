"""SQL of the live stream's events (sql/repeatable/80_outbox.sql): typed position changes
(position_created, position_updated, position_closed), consecutive price changes as one
price_update, the asset filter, position_size_norm as the relay publishes it, and the start of a
stream without Last-Event-ID (pm.stream_start: the open positions, after the writers in flight)."""
from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

from app.db import q
from tests.sql.calls import call, fill, push_prices
from tests.sql.helpers import messages


def fetch(db, after, assets=None, limit=500):
    (result,) = db.execute(q("extras_stream_fetch"), {"after": after, "limit": limit, "hold": None, "grace": 3600,
                                                       "assets": assets}).fetchone()
    assert result["hold"] is None, result
    return result


def kinds(result):
    return [(e["event"], e["data"].get("asset")) for e in result["events"]]


def test_changes_are_typed_created_updated_closed(db):
    head = call(db, "extras_stream_head")
    fill(db, "BTCUSDT", "Buy", "1", "100")                       # opens
    fill(db, "BTCUSDT", "Buy", "1", "110")                       # adds
    fill(db, "BTCUSDT", "Sell", "3", "120")                      # flips: still open
    fill(db, "BTCUSDT", "Buy", "1", "100")                       # closes
    fill(db, "BTCUSDT", "Buy", "1", "90", at="2025-01-27T11:00:00Z")   # opens again
    call(db, "extras_open_position", body=json.dumps({"asset": "ETHUSDT", "side": "short", "quantity": "1",
                                                      "entry_price": "3000", "mode": "hedge"}), trace=None, actor=None)
    call(db, "extras_update_position_meta", asset="ETHUSDT", mode="hedge", patch='{"notes": "x"}',
         expected_version=None, trace=None, actor=None)
    call(db, "extras_close_position", asset="ETHUSDT", mode="hedge", exit_price=Decimal(2900), expected_version=None,
         trace=None, actor=None)
    result = fetch(db, head)
    assert kinds(result) == [("position_created", "BTCUSDT"), ("position_updated", "BTCUSDT"),
                             ("position_updated", "BTCUSDT"), ("position_closed", "BTCUSDT"),
                             ("position_created", "BTCUSDT"), ("position_created", "ETHUSDT"),
                             ("position_updated", "ETHUSDT"), ("position_closed", "ETHUSDT")]
    assert all(e["data"]["event_type"] == e["event"] for e in result["events"])
    # the body is the published one (metadata, avg_price) with the stream's type
    closed = result["events"][-1]["data"]
    assert (closed["notes"], closed["is_open"], closed["update_source"]) == ("x", False, "manual")


def test_consecutive_price_changes_are_one_price_update_with_the_newest_prices(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Sell", "2", "50")
    fill(db, "XRPUSDT", "Buy", "10", "1", mode="hedge", position_idx=1)
    head = call(db, "extras_stream_head")
    push_prices(db, {"BTCUSDT": "101", "ETHUSDT": "49", "XRPUSDT": "1.1"})
    push_prices(db, {"BTCUSDT": "102"})
    fill(db, "BTCUSDT", "Buy", "1", "102")
    push_prices(db, {"ETHUSDT": "48"})
    result = fetch(db, head)
    assert [e["event"] for e in result["events"]] == ["price_update", "position_updated", "price_update"]
    first = result["events"][0]
    assert first["data"]["prices"] == {"BTCUSDT": "102", "ETHUSDT": "49", "XRPUSDT": "1.1"}
    assert [(p["asset"], p["mode"], p["current_price"], p["unrealized_pnl"]) for p in first["data"]["positions"]] == \
        [("BTCUSDT", "one-way", "102", "2"), ("ETHUSDT", "one-way", "49", "2"), ("XRPUSDT", "hedge", "1.1", "1")]
    # its id is the newest price change it covers: a client resuming after it misses none of them
    ids = [r[0] for r in db.execute("SELECT id FROM pm.outbox WHERE id > %s AND action = 'price' ORDER BY id",
                                    (head,)).fetchall()]
    assert first["id"] == ids[3] and result["events"][2]["id"] == ids[4] == result["cursor"]
    assert result["events"][2]["data"]["prices"] == {"ETHUSDT": "48"}


def test_the_asset_filter_keeps_only_those_symbols_and_moves_past_the_others(db):
    head = call(db, "extras_stream_head")
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Buy", "1", "100")
    push_prices(db, {"BTCUSDT": "101", "ETHUSDT": "99"})
    fill(db, "SOLUSDT", "Buy", "1", "100")
    result = fetch(db, head, assets=["ETHUSDT", "SOLUSDT"])
    assert kinds(result) == [("position_created", "ETHUSDT"), ("price_update", None), ("position_created", "SOLUSDT")]
    assert result["events"][1]["data"]["prices"] == {"ETHUSDT": "99"}
    assert result["cursor"] == call(db, "extras_stream_head")
    assert fetch(db, head, assets=["ADAUSDT"])["events"] == []


def test_position_size_norm_is_filled_as_the_relay_publishes_it(db):
    head = call(db, "extras_stream_head")
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Buy", "3", "100")
    push_prices(db, {"BTCUSDT": "100", "ETHUSDT": "100"})
    fill(db, "BTCUSDT", "Buy", "1", "100")
    event = fetch(db, head)["events"][-1]
    assert event["event"] == "position_updated" and event["data"]["position_size_norm"] == "0.4"   # 200 of 500
    published = [m["payload"] for m in messages(db) if m["event_type"] == "position_updated"][-1]
    assert published["position_size_norm"] == event["data"]["position_size_norm"]
    prices = fetch(db, head)["events"][2]
    assert prices["event"] == "price_update"
    # exposure as of the change, total as of the read, like the relay's publication
    assert {p["asset"]: p["position_size_norm"] for p in prices["data"]["positions"]} == {"BTCUSDT": "0.2", "ETHUSDT": "0.6"}


def test_stream_start_gives_the_open_positions_after_the_writers_in_flight(db, connect):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ADAUSDT", "Buy", "1", "1")
    call(db, "extras_close_position", asset="ADAUSDT", mode="one-way", exit_price=Decimal(1), expected_version=None,
         trace=None, actor=None)
    slow = connect()
    fill(slow, "ETHUSDT", "Buy", "2", "100")          # takes an outbox id, commits later
    fill(db, "SOLUSDT", "Buy", "1", "100")            # a higher id, committed first: the head
    timer = threading.Timer(0.3, slow.commit)
    timer.start()
    started = time.monotonic()
    (start,) = db.execute(q("extras_stream_start"), {"assets": None, "grace": 30}).fetchone()
    timer.join()
    assert time.monotonic() - started >= 0.25           # it waited for the writer in flight ...
    assert [p["asset"] for p in start["positions"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]   # ... and sees its change
    assert start["cursor"] == call(db, "extras_stream_head")
    assert all(p["is_open"] and p["position_size_norm"] is None for p in start["positions"])   # no prices yet
    push_prices(db, {"BTCUSDT": "100", "ETHUSDT": "100"})
    (start,) = db.execute(q("extras_stream_start"), {"assets": ["ETHUSDT"], "grace": 1}).fetchone()
    assert [(p["asset"], p["position_size_norm"]) for p in start["positions"]] == [("ETHUSDT", "0.66666667")]
