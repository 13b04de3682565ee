"""pm.apply_order_event: the fill accounting and every order/fill shape,
idempotency, order independence, version and the position_updated outbox."""
from __future__ import annotations

import re
from decimal import Decimal as D

import psycopg
import pytest

from tests.sql.helpers import (apply_order, at_naive, bybit_c, bybit_message, close, counts, exec_a, fold,
                               hedge_a, messages, order_b, outbox_rows, position)

POSITION_FIELDS = ("id", "asset", "mode", "side", "size", "long_size", "short_size", "average_entry_price",
                   "long_avg_price", "short_avg_price", "current_price", "price_updated_at", "unrealized_pnl",
                   "realized_pnl", "unrealized_pnl_pct", "time_held_minutes", "position_size_norm",
                   "exposure_usdt", "version", "created_at", "last_updated", "closed_at", "last_snapshot_at")
EVENT_FIELDS = ("event_id", "event_type", "asset", "mode", "version", "update_source", "trace_id", "timestamp")
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")



def apply_all(db, events):
    return [apply_order(db, ev) for ev in events]


def assert_position(row, size, avg, realized):
    assert close(row["size"], D(size)), row
    assert close(row["average_entry_price"], None if avg is None else D(avg)), row
    assert close(row["realized_pnl"], D(realized)), row


def assert_matches_fold(db, row):
    """The stored position equals a fold of its ledger from scratch."""
    st = fold(db, row["id"])
    assert st["size"] == row["size"]
    assert st["avg_price"] == row["average_entry_price"]
    assert st["realized"] == row["realized_pnl"]


# ---------------------------------------------------------------------------------------------
# Worked examples of the fill accounting
# ---------------------------------------------------------------------------------------------

def test_worked_example_buy_buy_sell(db):
    results = apply_all(db, [exec_a("w1", "Buy", 10, 100, "0.1", 0), exec_a("w2", "Buy", 10, 110, "0.11", 1),
                             exec_a("w3", "Sell", 5, 120, "0.06", 2)])
    assert [r["status"] for r in results] == ["applied"] * 3
    row = position(db)
    assert_position(row, 15, 105, "74.73")
    assert_matches_fold(db, row)


def test_worked_example_two_sells_average_never_negative(db):
    apply_all(db, [exec_a("w1", "Sell", 1, 100, "0", 0), exec_a("w2", "Sell", 1, 110, "0", 1)])
    row = position(db)
    assert_position(row, -2, 105, 0)
    assert row["average_entry_price"] > 0


def test_worked_example_flip(db):
    apply_all(db, [exec_a("w1", "Buy", 100, 1, "0", 0), exec_a("w2", "Sell", 50, 2, "0", 1),
                   exec_a("w3", "Sell", 100, 3, "0", 2)])
    row = position(db)
    assert_position(row, -50, 3, 150)
    assert row["opened_at"] == at_naive(2), "the flip opens a new holding at the flipping fill's time"
    assert_matches_fold(db, row)


# ---------------------------------------------------------------------------------------------
# Each rule of the fill accounting (one-way)
# ---------------------------------------------------------------------------------------------

def test_open_creates_position_at_fill_time(db):
    res = apply_order(db, exec_a("o1", "Buy", "2", "100", "0.2", 5))
    assert res["status"] == "applied"
    row = position(db)
    assert_position(row, 2, 100, "-0.2")
    assert row["opened_at"] == at_naive(5)
    assert row["closed_at"] is None
    assert row["created_at"] is not None
    # the result names the position and its new version; the Position itself is pm.get_position
    assert res["position"] == {"id": str(row["id"]), "asset": "BTCUSDT", "mode": "one-way", "version": 1}
    assert res["execution"] == "o1"


def test_open_short(db):
    apply_order(db, exec_a("o1", "Sell", "0.5", "200", "0", 0))
    row = position(db)
    assert_position(row, "-0.5", 200, 0)
    assert position(db)["opened_at"] == at_naive(0)


def test_add_weights_average(db):
    apply_all(db, [exec_a("a1", "Buy", 1, 100, "0", 0), exec_a("a2", "Buy", 3, 120, "0", 1)])
    assert_position(position(db), 4, 115, 0)
    # opened_at stays at the first fill: adding does not start a new holding
    assert position(db)["opened_at"] == at_naive(0)


def test_reduce_keeps_average_and_realizes(db):
    apply_all(db, [exec_a("r1", "Buy", 4, 100, "0", 0), exec_a("r2", "Sell", 1, 90, "0.01", 1)])
    assert_position(position(db), 3, 100, "-10.01")


def test_reduce_short_realizes_with_sign(db):
    apply_all(db, [exec_a("r1", "Sell", 4, 100, "0", 0), exec_a("r2", "Buy", 1, 90, "0", 1)])
    assert_position(position(db), -3, 100, 10)


def test_close_sets_avg_null_and_closed_at(db):
    apply_all(db, [exec_a("c1", "Buy", 2, 100, "0", 0), exec_a("c2", "Sell", 2, 110, "0", 7)])
    row = position(db)
    assert_position(row, 0, None, 20)
    assert row["closed_at"] == at_naive(7)
    assert row["average_entry_price"] is None
    assert_matches_fold(db, row)
    view = db.execute("SELECT side, is_open FROM pm.v_positions WHERE id = %s", (row["id"],)).fetchone()
    assert view == ("flat", False)


def test_flip_long_to_short_opens_new_holding(db):
    apply_all(db, [exec_a("f1", "Buy", 1, 100, "0", 0), exec_a("f2", "Sell", 3, 90, "0", 4)])
    row = position(db)
    assert_position(row, -2, 90, -10)
    assert row["opened_at"] == at_naive(4)
    assert row["closed_at"] is None


def test_flip_short_to_long(db):
    apply_all(db, [exec_a("f1", "Sell", 2, 100, "0", 0), exec_a("f2", "Buy", 5, 80, "0", 3)])
    row = position(db)
    assert_position(row, 3, 80, 40)
    assert row["opened_at"] == at_naive(3)


def test_reopen_after_close_clears_closed_at(db):
    apply_all(db, [exec_a("x1", "Buy", 2, 100, "0", 0), exec_a("x2", "Sell", 2, 110, "0", 1)])
    assert position(db)["closed_at"] == at_naive(1)
    apply_order(db, exec_a("x3", "Sell", 1, 120, "0.5", 9))
    row = position(db)
    assert_position(row, -1, 120, "19.5")        # realized is cumulative over the row's life
    assert row["closed_at"] is None
    assert row["opened_at"] == at_naive(9)
    assert_matches_fold(db, row)


def test_negative_fee_is_a_rebate(db):
    apply_order(db, exec_a("n1", "Buy", 1, 100, "-0.05", 0))
    assert_position(position(db), 1, 100, "0.05")


def test_fee_only_changes_realized(db):
    apply_all(db, [exec_a("n1", "Buy", 1, 100, "0.3", 0), exec_a("n2", "Buy", 1, 100, "0.2", 1)])
    assert_position(position(db), 2, 100, "-0.5")


# ---------------------------------------------------------------------------------------------
# Hedge legs
# ---------------------------------------------------------------------------------------------

def test_hedge_legs(db):
    apply_all(db, [hedge_a("h1", 1, "Buy", 2, 100, "0", 0), hedge_a("h2", 1, "Buy", 2, 110, "0", 1),
                   hedge_a("h3", 2, "Sell", 1, 120, "0", 2)])
    row = position(db, mode="hedge")
    assert (row["long_size"], row["long_avg_price"]) == (4, 105)
    assert (row["short_size"], row["short_avg_price"]) == (1, 120)
    assert row["size"] == 3
    assert position(db) is None, "a hedge fill must not touch the one-way row"

    apply_all(db, [hedge_a("h4", 1, "Sell", 1, 130, "0.1", 3), hedge_a("h5", 2, "Buy", 1, 100, "0", 4)])
    row = position(db, mode="hedge")
    assert (row["long_size"], row["long_avg_price"]) == (3, 105)     # reduce keeps the average
    assert (row["short_size"], row["short_avg_price"]) == (0, None)  # closed leg: average NULL
    assert row["size"] == 3
    assert close(row["realized_pnl"], D("44.9"))                     # 25 - 0.1 + 20
    st = fold(db, row["id"])
    assert (st["long_size"], st["short_size"], st["realized"]) == (3, 0, row["realized_pnl"])
    view = db.execute("SELECT side FROM pm.v_positions WHERE id = %s", (row["id"],)).fetchone()[0]
    assert view == "long"


def test_hedge_both_legs_open_is_hedged(db):
    apply_all(db, [hedge_a("h1", 1, "Buy", 1, 100, "0", 0), hedge_a("h2", 2, "Sell", 1, 100, "0", 1)])
    row = position(db, mode="hedge")
    assert row["size"] == 0 and row["closed_at"] is None
    view = db.execute("SELECT side, is_open FROM pm.v_positions WHERE id = %s", (row["id"],)).fetchone()
    assert view == ("hedged", True)


@pytest.mark.parametrize("idx, open_side, reduce_side", [(1, "Buy", "Sell"), (2, "Sell", "Buy")])
def test_hedge_reduce_beyond_leg_is_invalid_and_writes_nothing(db, idx, open_side, reduce_side):
    apply_order(db, hedge_a("h1", idx, open_side, 1, 100, "0", 0))
    before_row, before = position(db, mode="hedge"), counts(db)
    with pytest.raises(psycopg.Error) as err:
        apply_order(db, hedge_a("h2", idx, reduce_side, "1.5", 100, "0", 1))
    assert err.value.sqlstate == "22023"
    assert "quantity" in err.value.diag.message_primary
    assert counts(db) == before
    assert position(db, mode="hedge") == before_row


@pytest.mark.parametrize("idx, side", [(1, "Sell"), (2, "Buy")])
def test_hedge_reduce_of_empty_leg_creates_nothing(db, idx, side):
    with pytest.raises(psycopg.Error) as err:
        apply_order(db, hedge_a("h1", idx, side, 1, 100, "0", 0))
    assert err.value.sqlstate == "22023"
    assert all(n == 0 for n in counts(db).values()), counts(db)


def test_hedge_position_idx_on_bybit_record(db):
    apply_order(db, bybit_c("e1", "Buy", 2, 100, "0", 0, positionIdx=1))
    apply_order(db, bybit_c("e2", "Sell", 3, 90, "0", 1, positionIdx=2))
    row = position(db, mode="hedge")
    assert (row["long_size"], row["short_size"], row["size"]) == (2, 3, -1)


# ---------------------------------------------------------------------------------------------
# Funding (Bybit execType Funding): realized PnL only
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fee, realized", [("0.5", "-0.6"), ("-0.25", "0.15")])
def test_funding_changes_only_realized(db, fee, realized):
    apply_order(db, bybit_c("t1", "Buy", 2, 100, "0.1", 0))
    before = position(db)
    res = apply_order(db, bybit_c("fund1", "Sell", 2, 101, fee, 60, exec_type="Funding"))
    assert res["status"] == "applied"
    row = position(db)
    assert (row["size"], row["average_entry_price"]) == (before["size"], before["average_entry_price"])
    assert row["opened_at"] == before["opened_at"]
    assert row["realized_pnl"] == D(realized)
    assert row["version"] == before["version"] + 1
    assert_matches_fold(db, row)


def test_funding_twice_is_duplicate(db):
    apply_order(db, bybit_c("t1", "Buy", 2, 100, "0", 0))
    apply_order(db, bybit_c("fund1", "Sell", 2, 101, "0.5", 60, exec_type="Funding"))
    assert apply_order(db, bybit_c("fund1", "Sell", 2, 101, "0.5", 60, exec_type="Funding"))["status"] == "duplicate"
    assert position(db)["realized_pnl"] == D("-0.5")


# ---------------------------------------------------------------------------------------------
# Shape A
# ---------------------------------------------------------------------------------------------

def test_shape_a_lower_case_asset_and_numbers(db):
    ev = exec_a("a1", "Buy", 1, 100, 0, 0, asset="ethusdt")
    ev["execution_quantity"], ev["execution_price"], ev["execution_fees"] = 1.5, 2000.25, 0.1
    assert apply_order(db, ev)["status"] == "applied"
    assert_position(position(db, "ETHUSDT"), "1.5", "2000.25", "-0.1")


def test_shape_a_explicit_one_way_index_zero(db):
    assert apply_order(db, exec_a("a1", "Buy", 1, 100, mode="one-way", position_idx=0))["status"] == "applied"
    assert position(db)["size"] == 1


# ---------------------------------------------------------------------------------------------
# Shape B: cumulative order events
# ---------------------------------------------------------------------------------------------

def test_shape_b_partial_then_full_applies_the_difference(db):
    r1 = apply_order(db, order_b("o1", "partially_filled", "Buy", "0.4", "100", "0.04", 0))
    assert r1["status"] == "applied"
    assert_position(position(db), "0.4", 100, "-0.04")
    r2 = apply_order(db, order_b("o1", "filled", "Buy", "1.0", "103", "0.1", 1))
    assert r2["status"] == "applied"
    # new execution: 0.6 @ (103*1 - 100*0.4)/0.6 = 105, fee 0.06
    row = position(db)
    assert_position(row, 1, 103, "-0.1")
    ledger = db.execute("SELECT qty, price, fee FROM pm.executions WHERE position_id = %s ORDER BY exec_time",
                        (row["id"],)).fetchall()
    assert ledger == [(D("0.4"), 100, D("0.04")), (D("0.6"), 105, D("0.06"))]
    assert row["version"] == 2
    payloads = [m["payload"] for m in messages(db)]
    assert [(p["version"], p["trace_id"], p["update_source"]) for p in payloads] == [
        (1, "tr-o1", "order_execution"), (2, "tr-o1", "order_execution")]


def test_shape_b_same_event_twice_is_duplicate(db):
    ev = order_b("o1", "filled", "Sell", "2", "50", "0.1", 0)
    assert apply_order(db, ev)["status"] == "applied"
    before, before_counts = position(db), counts(db)
    assert apply_order(db, ev)["status"] == "duplicate"
    assert position(db) == before
    assert counts(db) == before_counts


def test_shape_b_older_partial_after_full_has_no_effect(db):
    apply_order(db, order_b("o1", "filled", "Buy", "1", "100", "0.1", 1))
    before, before_counts = position(db), counts(db)
    res = apply_order(db, order_b("o1", "partially_filled", "Buy", "0.5", "100", "0.05", 0))
    assert res["status"] in ("stale", "duplicate")
    assert position(db) == before
    assert counts(db) == before_counts


def test_shape_b_non_fill_events_are_ignored(db):
    for event_type in ["cancelled", "rejected", "created", "amended", "expired"]:
        res = apply_order(db, order_b("o1", event_type, "Buy", "0", "0", "0", 0))
        assert res["status"] == "ignored", event_type
    assert all(n == 0 for n in counts(db).values())


def test_shape_b_cancelled_after_partial_fill_keeps_the_fill(db):
    apply_order(db, order_b("o1", "partially_filled", "Buy", "0.3", "100", "0", 0))
    before = position(db)
    # the cancelled event adds nothing to the 0.3 already applied
    assert apply_order(db, order_b("o1", "cancelled", "Buy", "0.3", "100", "0", 1))["status"] == "duplicate"
    assert position(db) == before


def test_shape_b_cancelled_event_carrying_more_fills_applies_them(db):
    apply_order(db, order_b("o1", "partially_filled", "Buy", "1", "100", "0", 0, quantity="2"))
    assert apply_order(db, order_b("o1", "cancelled", "Buy", "1.5", "100.2", "0", 1, quantity="2"))["status"] == "applied"
    assert_position(position(db), "1.5", "100.2", 0)


@pytest.mark.parametrize("dry", [False, "false"])
def test_shape_b_real_producer_not_dry_run_is_applied(db, dry):
    res = apply_order(db, order_b("o1", "filled", "Buy", "1", "100", "0", 0, is_dry_run=dry))
    assert res["status"] == "applied"
    assert position(db)["size"] == 1


@pytest.mark.parametrize("dry", [True, "true"])
def test_shape_b_dry_run_is_ignored(db, dry):
    res = apply_order(db, order_b("o1", "filled", "Buy", "1", "100", "0", 0, is_dry_run=dry))
    assert res["status"] == "ignored"
    assert all(n == 0 for n in counts(db).values())


def test_shape_b_upper_case_side_sell(db):
    assert apply_order(db, order_b("o1", "filled", "SELL", "2", "100", "0", 0))["status"] == "applied"
    assert_position(position(db), -2, 100, 0)


def test_shape_b_two_orders_accumulate(db):
    apply_order(db, order_b("o1", "filled", "Buy", "1", "100", "0", 0))
    apply_order(db, order_b("o2", "filled", "Buy", "1", "110", "0", 1))
    assert_position(position(db), 2, 105, 0)


# ---------------------------------------------------------------------------------------------
# Shape C: Bybit execution records
# ---------------------------------------------------------------------------------------------

def test_shape_c_message_with_several_records(db):
    msg = bybit_message(bybit_c("e1", "Buy", 10, 100, "0.1", 0, seq=1), bybit_c("e2", "Buy", 10, 110, "0.11", 1, seq=2),
                        bybit_c("e3", "Sell", 5, 120, "0.06", 2, seq=3))
    res = apply_order(db, msg)
    assert res["status"] == "applied"
    assert [r["status"] for r in res["results"]] == ["applied"] * 3
    row = position(db)
    assert_position(row, 15, 105, "74.73")
    assert row["version"] == 3
    assert len(outbox_rows(db, row["id"])) == 3


def test_shape_c_single_record_and_single_element_message(db):
    assert apply_order(db, bybit_c("e1", "Buy", 1, 100, "0", 0))["status"] == "applied"
    assert apply_order(db, bybit_message(bybit_c("e2", "Buy", 1, 110, "0", 1)))["status"] == "applied"
    assert_position(position(db), 2, 105, 0)


@pytest.mark.parametrize("exec_type", ["Trade", "BustTrade", "AdlTrade", "Delivery"])
def test_shape_c_position_changing_exec_types(db, exec_type):
    apply_order(db, bybit_c("e1", "Buy", 2, 100, "0", 0))
    res = apply_order(db, bybit_c("e2", "Sell", 1, 90, "0", 1, exec_type=exec_type))
    assert res["status"] == "applied"
    assert_position(position(db), 1, 100, -10)


@pytest.mark.parametrize("exec_type", ["Settle", "SomethingNew"])
def test_shape_c_other_exec_types_are_ignored(db, exec_type):
    res = apply_order(db, bybit_c("e1", "Buy", 2, 100, "0", 0, exec_type=exec_type))
    assert res["status"] == "ignored"
    assert all(n == 0 for n in counts(db).values())


def test_shape_c_message_mixing_ignored_and_applied(db):
    res = apply_order(db, bybit_message(bybit_c("e1", "Buy", 1, 100, "0", 0, exec_type="Settle"),
                                        bybit_c("e2", "Buy", 1, 100, "0", 1)))
    assert res["status"] == "applied"
    assert [r["status"] for r in res["results"]] == ["ignored", "applied"]
    assert position(db)["size"] == 1


# ---------------------------------------------------------------------------------------------
# Idempotency, order independence, version
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: exec_a("d1", "Buy", 1, 100, "0.1", 0),
    lambda: bybit_c("d1", "Buy", 1, 100, "0.1", 0),
    lambda: bybit_message(bybit_c("d1", "Buy", 1, 100, "0.1", 0), bybit_c("d2", "Buy", 1, 100, "0.1", 1)),
], ids=["shape-a", "shape-c-record", "shape-c-message"])
def test_same_execution_twice_has_one_effect(db, make):
    assert apply_order(db, make())["status"] == "applied"
    before, before_counts = position(db), counts(db)
    res = apply_order(db, make())
    assert res["status"] == "duplicate"
    assert position(db) == before            # version, last_updated and every figure unchanged
    assert counts(db) == before_counts       # no ledger row, no outbox row


def test_late_execution_is_recomputed_to_the_in_order_result(db):
    fills = [("l1", "Buy", 10, 100, "0.1", 0), ("l2", "Sell", 4, 120, "0.05", 1), ("l3", "Sell", 10, 90, "0", 2),
             ("l4", "Buy", 2, 95, "-0.01", 3)]
    for key, side, q, p, f, m in fills:
        apply_order(db, exec_a(key, side, q, p, f, m, asset="INORDERUSDT"))
    for i in (0, 3, 2, 1):                   # l2 and l3 arrive after l4
        key, side, q, p, f, m = fills[i]
        assert apply_order(db, exec_a(key + "x", side, q, p, f, m, asset="LATEUSDT"))["status"] == "applied"
    expected, late = position(db, "INORDERUSDT"), position(db, "LATEUSDT")
    for col in ("size", "average_entry_price", "realized_pnl", "opened_at", "closed_at"):
        assert late[col] == expected[col], col
    assert late["version"] == 4
    assert_matches_fold(db, late)
    # every stored state_after agrees with a fresh fold (the re-fold repaired the later rows)
    states = db.execute("SELECT (state_after).size FROM pm.executions WHERE position_id = %s "
                        "ORDER BY exec_time, seq, exec_key", (late["id"],)).fetchall()
    assert [s for (s,) in states] == [10, 6, -4, -2]


def test_late_execution_before_a_close_reopens_correctly(db):
    # in time order: Buy 1 @0, Sell 1 @2 (close), Buy 1 @5 (reopen); delivered 0, 5, 2
    for key, side, m in (("c1", "Buy", 0), ("c3", "Buy", 5), ("c2", "Sell", 2)):
        apply_order(db, exec_a(key, side, 1, 100, "0", m))
    row = position(db)
    assert row["size"] == 1 and row["opened_at"] == at_naive(5) and row["closed_at"] is None


def test_version_bumps_once_per_applied_change_only(db):
    versions = []
    for ev in (exec_a("v1", "Buy", 1, 100, "0", 0), exec_a("v2", "Buy", 1, 100, "0", 1)):
        apply_order(db, ev)
        versions.append(position(db)["version"])
    apply_order(db, exec_a("v2", "Buy", 1, 100, "0", 1))                          # duplicate
    apply_order(db, bybit_c("v3", "Buy", 1, 100, "0", 2, exec_type="Settle"))      # ignored
    apply_order(db, order_b("o9", "cancelled", "Buy", "0", "0", "0", 3))           # ignored
    versions.append(position(db)["version"])
    apply_order(db, exec_a("v0", "Buy", 1, 100, "0", -1))                          # late, applied
    versions.append(position(db)["version"])
    assert versions == [1, 2, 2, 3]


# ---------------------------------------------------------------------------------------------
# Audit trail / outbox
# ---------------------------------------------------------------------------------------------

def test_every_applied_change_adds_one_outbox_row_with_full_payload(db):
    events = [exec_a("p1", "Buy", 2, 100, "0", 0), exec_a("ob1", "Sell", "1", "110", "0", 1),
              bybit_c("pc1", "Buy", 1, 105, "0", 2), bybit_c("pf1", "Buy", 1, 105, "0.01", 3, exec_type="Funding")]
    for n, ev in enumerate(events, start=1):
        apply_order(db, ev)
        row = position(db)
        rows, published = outbox_rows(db), messages(db)
        assert len(rows) == len(published) == n
        last = published[-1]
        assert last["event_type"] == rows[-1]["event_type"] == "position_updated"
        payload = last["payload"]
        for key in EVENT_FIELDS + POSITION_FIELDS:
            assert key in payload, key
        assert payload["event_type"] == "position_updated"
        assert payload["event_id"] == str(last["event_id"])
        assert payload["asset"] == "BTCUSDT" and payload["mode"] == "one-way"
        assert payload["version"] == row["version"] == n
        assert payload["update_source"] == "order_execution"
        assert D(payload["size"]) == row["size"]
        assert D(payload["realized_pnl"]) == row["realized_pnl"]
        assert ISO_Z.match(payload["timestamp"]), payload["timestamp"]
        assert ISO_Z.match(payload["last_updated"])
        assert payload["id"] == str(row["id"])
    assert messages(db)[0]["payload"]["trace_id"] == "tr-p1"
    assert messages(db)[1]["payload"]["trace_id"] == "tr-ob1"
    assert len({r["event_id"] for r in outbox_rows(db)}) == len(events)


def test_redelivered_close_of_a_hedge_leg_is_duplicate_not_invalid(db):
    """Applying the newest execution again would take the leg below zero: the key is checked first."""
    apply_order(db, hedge_a("h1", 1, "Buy", 2, 100, "0", 0))
    apply_order(db, hedge_a("h2", 1, "Sell", 2, 110, "0", 1))
    before = counts(db)
    assert apply_order(db, hedge_a("h2", 1, "Sell", 2, 110, "0", 1))["status"] == "duplicate"
    assert apply_order(db, hedge_a("h1", 1, "Buy", 2, 100, "0", 0))["status"] == "duplicate"   # late and known
    assert counts(db) == before


def test_same_execution_id_for_another_asset_is_duplicate(db):
    """The execution id is the identity, whatever position a second delivery names."""
    apply_order(db, exec_a("x1", "Buy", 2, 100, "0", 0))
    before = counts(db)
    res = apply_order(db, exec_a("x1", "Sell", 5, 100, "0", 0, asset="ETHUSDT"))
    assert res["status"] == "duplicate"
    assert counts(db)["pm.executions"] == before["pm.executions"] and len(outbox_rows(db)) == before["pm.outbox"]


def test_no_outbox_row_for_duplicate_or_ignored(db):
    apply_order(db, exec_a("p1", "Buy", 2, 100, "0", 0))
    apply_order(db, exec_a("p1", "Buy", 2, 100, "0", 0))
    apply_order(db, order_b("o1", "rejected", "Buy", "0", "0", "0", 1))
    assert len(outbox_rows(db)) == 1


def test_rollback_leaves_no_outbox_row_and_no_position_change(db, connect):
    apply_order(db, exec_a("p1", "Buy", 1, 100, "0", 0))
    before, before_counts = position(db), counts(db)
    conn = connect()                                   # a transaction of its own
    apply_order(conn, exec_a("p2", "Buy", 1, 120, "0", 1))
    apply_order(conn, exec_a("p3", "Buy", 1, 100, "0", 0, asset="ETHUSDT"))
    assert len(outbox_rows(conn)) == before_counts["pm.outbox"] + 2   # written inside the transaction
    conn.rollback()
    assert position(db) == before
    assert position(db, "ETHUSDT") is None
    assert counts(db) == before_counts
    # and the rolled-back execution can be applied later, once
    assert apply_order(db, exec_a("p2", "Buy", 1, 120, "0", 1))["status"] == "applied"
    assert position(db)["size"] == 2


# ---------------------------------------------------------------------------------------------
# Smaller contract points
# ---------------------------------------------------------------------------------------------

def test_shape_c_other_categories_are_ignored(db):
    for category in ["spot", "option", "inverse"]:
        assert apply_order(db, bybit_c("cat1", "Buy", 1, 100, "0", 0, category=category))["status"] == "ignored"
    assert all(n == 0 for n in counts(db).values())


def test_shape_b_hedge_leg(db):
    res = apply_order(db, order_b("oh1", "filled", "Sell", "2", "100", "0", 0, mode="hedge", position_idx=2))
    assert res["status"] == "applied"
    row = position(db, mode="hedge")
    assert (row["short_size"], row["short_avg_price"], row["size"]) == (2, 100, -2)


def test_shape_b_filled_without_filled_quantity_uses_quantity(db):
    ev = order_b("oq1", "filled", "Buy", "0", "100", "0", 0, quantity="3")
    del ev["order"]["filled_quantity"]
    assert apply_order(db, ev)["status"] == "applied"
    assert position(db)["size"] == 3


def test_shape_b_partial_fills_with_uneven_average(db):
    apply_order(db, order_b("ou1", "partially_filled", "Buy", "0.3", "100", "0", 0))
    apply_order(db, order_b("ou1", "filled", "Buy", "1", "101", "0", 1))
    row = position(db)
    assert row["size"] == 1 and close(row["average_entry_price"], D(101))
    assert_matches_fold(db, row)


def test_execution_times_are_utc_whatever_the_session_time_zone(db):
    db.execute("SET TimeZone = 'America/New_York'")
    formats = ["2026-01-01T00:05:00Z", "2026-01-01T00:05:00", "2026-01-01 00:05:00", "2026-01-01T02:05:00+02:00",
               "2025-12-31T19:05:00-0500", "2026-01-01T00:05:00.000Z", "1767225900000", 1767225900000]
    for n, executed_at in enumerate(formats):        # one position per format (one database: cheaper)
        asset = f"TZ{n}USDT"
        apply_order(db, exec_a(f"tz{n}", "Buy", 1, 100, "0", 0, asset=asset) | {"executed_at": executed_at})
        assert position(db, asset)["opened_at"] == at_naive(5), executed_at
        assert apply_order(db, bybit_c(f"tz{n}c", "Sell", 1, 100, "0", 9, symbol=asset))["status"] == "applied"
        assert position(db, asset)["closed_at"] == at_naive(9)
        assert db.execute("SELECT pm.get_position(%s)", (asset,)).fetchone()[0]["closed_at"] == "2026-01-01T00:09:00.000000Z"
