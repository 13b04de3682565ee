"""order-manager's order events exactly as it publishes them (tests/ytrader.py), through
pm.apply_order_event and pm.apply_batch (the consumer's path): every fill counted whatever the
event type, nothing counted twice, events that add nothing acknowledged without effect."""
from __future__ import annotations

import json
import random
import uuid
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.sql.helpers import apply_order, close, counter, counts, position
from tests.ytrader import OrderManagerOrder


def batch(db, events):
    return db.execute("SELECT pm.apply_batch('order', %s::jsonb)", (json.dumps(events),)).fetchone()[0]


def ledger(db, order_id):
    return db.execute("SELECT qty, price, fee FROM pm.executions WHERE order_id = %s ORDER BY applied_at, exec_time, qty",
                      (order_id,)).fetchall()


def state(db, asset="BTCUSDT"):
    row = position(db, asset)
    return None if row is None else (row["size"], row["average_entry_price"], row["realized_pnl"], row["version"])


def test_cancelled_after_partial_applies_the_last_fills(db):
    """A limit order fills 1 @ 100 (partially_filled), then 0.5 more; order-manager publishes
    nothing for that (the status did not change) and then `cancelled` with the cumulative 1.5."""
    order = OrderManagerOrder("BTCUSDT", "Buy", "2", "100")
    partial = order.update("PartiallyFilled", "1", "100", at=1)
    assert order.update("PartiallyFilled", "1.5", "100.2", at=2) is None
    cancelled = order.update("Cancelled", "1.5", "100.2", at=3)
    assert cancelled["event_type"] == "cancelled" and cancelled["order"]["executed_at"] is None

    assert apply_order(db, partial)["status"] == "applied"
    result = apply_order(db, cancelled)
    assert result["status"] == "applied", result
    assert state(db) == (D("1.5"), D("100.2"), 0, 2)
    # the difference: 0.5 @ (1.5 x 100.2 - 1 x 100) / 0.5 = 100.6
    assert ledger(db, order.order_id) == [(1, 100, 0), (D("0.5"), D("100.6"), 0)]


def test_partial_partial_cancelled_sell_with_fees(db):
    order = OrderManagerOrder("ETHUSDT", "Sell", "3", "2000")
    first = order.update("PartiallyFilled", "1", "2000", "0.4", at=1)
    order.update("PartiallyFilled", "2", "2001", "0.8", at=2)
    second = order.event("partially_filled", at=2)       # a second partial event (e.g. a replay)
    cancelled = order.update("Cancelled", "2.5", "2002", "1", at=3)
    assert first["order"]["side"] == "SELL"
    for ev in (first, second, cancelled):
        assert apply_order(db, ev)["status"] == "applied"
    size, avg, realized, version = state(db, "ETHUSDT")
    assert (size, avg, realized, version) == (D("-2.5"), 2002, -1, 3)
    assert ledger(db, order.order_id) == [(1, 2000, D("0.4")), (1, 2002, D("0.4")), (D("0.5"), 2006, D("0.2"))]


def test_partial_then_filled_with_null_fees_and_naive_times(db):
    order = OrderManagerOrder("SOLUSDT", "Buy", "10", "150", at=0)
    partial = order.update("PartiallyFilled", "4", "150", None, at=60)
    filled = order.update("Filled", "10", "150.6", None, at=120)
    assert partial["order"]["fees"] is None and partial["order"]["executed_at"] is None
    assert partial["timestamp"] == "2026-03-02T09:31:00" and filled["order"]["executed_at"] == "2026-03-02T09:32:00"
    apply_order(db, partial)
    apply_order(db, filled)
    assert state(db, "SOLUSDT") == (10, D("150.6"), 0, 2)
    times = db.execute("SELECT exec_time FROM pm.executions WHERE order_id = %s ORDER BY applied_at, exec_time, qty",
                       (order.order_id,)).fetchall()
    # naive timestamps are UTC; a partial event has no executed_at: the event's timestamp counts
    assert [t.isoformat() for (t,) in times] == ["2026-03-02T09:31:00+00:00", "2026-03-02T09:32:00+00:00"]


@pytest.mark.parametrize("path", ["one by one", "batch"])
def test_duplicates_of_every_event_change_nothing(db, path):
    orders = [OrderManagerOrder("BTCUSDT", "Buy", "2", "100"), OrderManagerOrder("BTCUSDT", "Sell", "1", "110")]
    a, b = orders
    events = [a.update("PartiallyFilled", "1", "100", "0.1", at=1),
              a.update("Cancelled", "1.5", "100.2", "0.15", at=3),
              b.update("PartiallyFilled", "0.25", "110", None, at=4),
              b.update("Filled", "1", "110.4", "0.11", at=5)]
    apply = (lambda evs: [apply_order(db, e) for e in evs]) if path == "one by one" else (lambda evs: batch(db, evs))
    first = apply(events)
    assert [r["status"] for r in first] == ["applied"] * 4
    after, after_counts = state(db), counts(db)
    assert after[0] == D("0.5")
    again = apply(events + list(reversed(events)))
    assert {r["status"] for r in again} <= {"duplicate", "stale"}
    # an order's latest event again is a duplicate; an earlier one (smaller cumulative figures) stale
    assert [r["status"] for r in again[:4]] == ["stale", "duplicate", "stale", "duplicate"]
    assert (state(db), counts(db)) == (after, after_counts)


def test_rejected_and_other_events_without_fills_are_no_ops(db):
    rejected = OrderManagerOrder("BTCUSDT", "Buy", "1", "100").update("Rejected", "0", at=1)
    pending = OrderManagerOrder("BTCUSDT", "SELL", "1", "100").event("pending")
    cancelled = OrderManagerOrder("BTCUSDT", "Buy", "1", "100").update("Cancelled", "0", at=1)
    for ev in (rejected, pending, cancelled):
        assert ev["order"]["average_price"] is None and ev["order"]["fees"] is None
        result = apply_order(db, ev)
        assert result["status"] == "ignored" and "nothing filled yet" in result["reason"], result
    assert all(n == 0 for n in counts(db).values())


def test_dry_run_fills_are_ignored(db):
    ev = OrderManagerOrder("BTCUSDT", "Buy", "1", "100", dry_run=True).update("Filled", "1", "100", at=1)
    assert apply_order(db, ev) == {"status": "ignored", "reason": "dry-run order"}
    assert all(n == 0 for n in counts(db).values())


@pytest.mark.parametrize("path", ["one by one", "batch"])
def test_filled_without_average_price_is_acknowledged_counted_and_caught_up(db, path):
    order = OrderManagerOrder("BTCUSDT", "Buy", "2", "100")
    partial = order.update("PartiallyFilled", "1", None, at=1)    # the exchange had no avgPrice yet
    assert partial["order"]["average_price"] is None
    before = counter(db, "order_events_without_price")
    result = apply_order(db, partial) if path == "one by one" else batch(db, [partial])[0]
    assert result["status"] == "ignored"
    assert "without average_price" in result["reason"] and order.order_id in result["reason"]
    assert all(n == 0 for n in counts(db).values())
    assert counter(db, "order_events_without_price") == before + 1
    health = db.execute("SELECT pm.health()").fetchone()[0]
    assert health["counters"]["order_events_without_price"] == before + 1
    # the next event carries the cumulative figures: everything is applied then
    filled = order.update("Filled", "2", "100.5", "0.2", at=2)
    assert apply_order(db, filled)["status"] == "applied"
    assert state(db) == (2, D("100.5"), D("-0.2"), 1)


def test_health_shows_the_counter_before_it_moves(db):
    assert db.execute("SELECT pm.health()").fetchone()[0]["counters"]["order_events_without_price"] == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["PartiallyFilled", "Filled", "Cancelled"]),
                                st.integers(min_value=0, max_value=3),
                                st.integers(min_value=0, max_value=40)), min_size=1, max_size=6),
       seed=st.integers(min_value=0, max_value=10_000))
def test_any_replay_counts_the_most_that_was_published(db, steps, seed):
    """Whatever the updates, the published events replayed with duplicates and in any order leave
    the position at the largest cumulative quantity that was published, its average that order's."""
    asset = f"P{uuid.uuid4().hex[:8].upper()}USDT"   # the database is shared by every example
    order = OrderManagerOrder(asset, "Buy", "100", "10")
    cum, notional, events = D(0), D(0), []
    for status, step_qty, step_price in steps:
        if order.status in ("filled", "cancelled"):
            break
        qty = D(step_qty) if status != "Filled" else D(100) - cum
        cum, notional = cum + qty, notional + qty * (10 + D(step_price) / 10)
        avg = (notional / cum).quantize(D("0.00000001")) if cum else None
        ev = order.update(status, cum, avg, at=len(events) + 1)
        if ev is not None:
            events.append(ev)
    rnd = random.Random(seed)
    replay = events + [rnd.choice(events) for _ in events]
    rnd.shuffle(replay)
    for ev in replay:
        assert apply_order(db, ev)["status"] in ("applied", "duplicate", "stale", "ignored")
    published = [D(e["order"]["filled_quantity"]) for e in events]
    row = position(db, asset)
    if not published or max(published) == 0:
        assert row is None
        return
    best = max(events, key=lambda e: D(e["order"]["filled_quantity"]))["order"]
    assert row["size"] == D(best["filled_quantity"])
    assert close(row["average_entry_price"], D(best["average_price"]), D("0.000001"))
