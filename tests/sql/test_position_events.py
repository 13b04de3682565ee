"""pm.apply_position_event: the three shapes and every rule of the exchange's position reports (the exchange stream owns
price and unrealized PnL; the fill path owns size)."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from tests.sql.helpers import (apply_order, apply_position, at, at_ms, counter, counts, exec_a, fold, messages,
                               outbox_rows, position)


def raw_record(side="Buy", size="1", avg="100", mark="100", minute=10, seq=1, idx=0, symbol="BTCUSDT", **extra):
    """One element of Bybit's position topic (v5 field names)."""
    rec = {"positionIdx": idx, "symbol": symbol, "side": side, "size": str(size), "avgPrice": str(avg),
           "markPrice": str(mark), "positionValue": "0", "unrealisedPnl": None, "cumRealisedPnl": "0",
           "updatedTime": at_ms(minute), "seq": seq, "positionStatus": "Normal"}
    rec.update(extra)
    return {k: v for k, v in rec.items() if v is not None}


def envelope_a(side="Buy", size="1", mark="100", minute=10, seq=1, entry="100", unrealised=None, mode=0,
               symbol="BTCUSDT", trace="tr-ws"):
    """Shape A: the ws-gateway envelope; avg_price null as the real producer sends it."""
    raw = raw_record(side, size, "0", mark, minute, seq, mode if isinstance(mode, int) else 0, symbol,
                     entryPrice=str(entry), unrealisedPnl=unrealised)
    raw.pop("avgPrice")
    return {"event_id": f"ev-{minute}-{seq}", "event_type": "position", "topic": "position",
            "timestamp": at(minute), "received_at": at(minute), "trace_id": trace,
            "payload": {"symbol": symbol, "size": str(size), "side": side, "avg_price": None,
                        "unrealised_pnl": unrealised, "realised_pnl": "1.5", "mode": mode,
                        "timestamp": at(minute), "raw": raw}}


def spec_b(size="1", avg="100", mark="100", minute=10, unrealised=None, mode="one-way", symbol="BTCUSDT"):
    payload = {"symbol": symbol, "mode": mode, "size": str(size), "avgPrice": str(avg), "markPrice": str(mark),
               "realisedPnl": "0", "timestamp": at(minute)}
    if unrealised is not None:
        payload["unrealisedPnl"] = str(unrealised)
    return {"event_type": "position", "payload": payload}


def topic_c(*records):
    return {"id": "pos-msg", "topic": "position", "creationTime": records[0]["updatedTime"], "data": list(records)}


def open_long(db, qty="2", price="100", minute=0):
    """A position owned by the fill path."""
    assert apply_order(db, exec_a(f"fill-{minute}", "Buy", qty, price, "0", minute))["status"] == "applied"
    return position(db)


# ---------------------------------------------------------------------------------------------
# Shapes and creation
# ---------------------------------------------------------------------------------------------

def test_shape_a_envelope_creates_position(db):
    res = apply_position(db, envelope_a("Sell", "0.5", mark="105", entry="100", unrealised="-2.5"))
    assert res["status"] == "applied"
    row = position(db)
    assert row["size"] == D("-0.5")
    assert row["average_entry_price"] == 100           # avg_price null -> raw entryPrice
    assert row["current_price"] == 105
    assert row["unrealized_pnl"] == D("-2.5")
    assert row["realized_pnl"] == 0                    # the exchange's realized PnL is not adopted
    assert row["version"] == 1
    (ob,) = messages(db)
    assert ob["payload"]["update_source"] == "exchange" and ob["payload"]["trace_id"] == "tr-ws"
    st = fold(db, row["id"])                           # creation is in the ledger too
    assert (st["size"], st["avg_price"]) == (row["size"], row["average_entry_price"])


def test_shape_b_spec_shape_creates_position(db):
    res = apply_position(db, spec_b("1.5", "200", "210", unrealised="15"))
    assert res["status"] == "applied"
    row = position(db)
    assert (row["size"], row["average_entry_price"], row["current_price"], row["unrealized_pnl"]) == (
        D("1.5"), 200, 210, 15)


def test_shape_c_message_and_single_record(db):
    res = apply_position(db, topic_c(raw_record("Buy", "3", "50", "55", symbol="ETHUSDT"),
                                     raw_record("Sell", "2", "10", "9", symbol="SOLUSDT")))
    assert res["status"] == "applied"
    assert [r["status"] for r in res["results"]] == ["applied", "applied"]
    assert position(db, "ETHUSDT")["size"] == 3
    assert position(db, "SOLUSDT")["size"] == -2
    assert apply_position(db, raw_record("Buy", "1", "7", "7", symbol="XRPUSDT"))["status"] == "applied"
    assert apply_position(db, topic_c(raw_record("Buy", "1", "8", "8", symbol="ADAUSDT")))["status"] == "applied"
    assert position(db, "XRPUSDT")["size"] == 1 and position(db, "ADAUSDT")["size"] == 1


def test_position_idx_zero_one_two(db):
    apply_position(db, raw_record("Buy", "1", "100", "100", idx=0))
    apply_position(db, raw_record("Buy", "2", "100", "100", idx=1))
    apply_position(db, raw_record("Sell", "0.5", "110", "100", idx=2, symbol="ETHUSDT"))
    one_way, long_leg, short_leg = position(db), position(db, mode="hedge"), position(db, "ETHUSDT", "hedge")
    assert one_way["size"] == 1
    assert (long_leg["long_size"], long_leg["long_avg_price"], long_leg["size"]) == (2, 100, 2)
    assert (short_leg["short_size"], short_leg["short_avg_price"], short_leg["size"]) == (D("0.5"), 110, D("-0.5"))


def test_report_of_other_leg_of_existing_hedge_row_is_a_discrepancy(db):
    # The hedge row exists (long leg from fills): the exchange's short leg is not adopted, it is reported.
    apply_order(db, exec_a("h", "Buy", "2", "100", "0", 0, mode="hedge", position_idx=1))
    apply_position(db, raw_record("Sell", "0.5", "110", "100", idx=2, minute=10))
    row = position(db, mode="hedge")
    assert (row["long_size"], row["short_size"]) == (2, 0)
    (field,) = db.execute("SELECT field FROM pm.discrepancies WHERE position_id = %s", (row["id"],)).fetchone()
    assert field == "short_size"


def test_envelope_mode_as_position_idx_int(db):
    apply_position(db, envelope_a("Buy", "2", mark="100", entry="100", mode=1))
    row = position(db, mode="hedge")
    assert row["long_size"] == 2 and position(db) is None


def test_flat_report_of_unknown_position_creates_nothing(db):
    res = apply_position(db, raw_record("", "0", "0", "100"))
    assert res["status"] == "ignored"
    assert all(n == 0 for n in counts(db).values())


# ---------------------------------------------------------------------------------------------
# Price, average, unrealized
# ---------------------------------------------------------------------------------------------

def test_mark_price_sets_current_price_and_event_unrealized(db):
    before = open_long(db)
    res = apply_position(db, envelope_a("Buy", "2", mark="110", entry="100", unrealised="19.5", minute=10))
    assert res["status"] == "applied"
    row = position(db)
    assert row["current_price"] == 110 and row["price_updated_at"] is not None
    assert row["unrealized_pnl"] == D("19.5")          # the event's value when present
    assert row["size"] == 2 and row["average_entry_price"] == 100
    assert row["version"] == before["version"] + 1
    assert messages(db)[-1]["payload"]["update_source"] == "exchange"


def test_unrealized_recomputed_without_event_value(db):
    open_long(db)
    apply_position(db, raw_record("Buy", "2", "100", "110.5", minute=10))
    assert position(db)["unrealized_pnl"] == 21


@pytest.mark.parametrize("mark", ["0", None])
def test_no_mark_price_keeps_current_price(db, mark):
    open_long(db)
    apply_position(db, raw_record("Buy", "2", "100", "110", minute=10))
    rec = raw_record("Buy", "2", "100", "1", minute=11)
    if mark is None:
        rec.pop("markPrice")
    else:
        rec["markPrice"] = mark
    apply_position(db, rec)
    assert position(db)["current_price"] == 110


@pytest.mark.parametrize("use_ws, threshold, event_avg, expected", [
    (None, None, "100.05", "100"),      # defaults: true, 0.001 -> 0.05 % is within
    (None, None, "101", "101"),         # 1 % > 0.1 % -> adopted
    ("false", None, "101", "100"),      # disabled -> never adopted
    ("true", "0.01", "100.5", "100"),   # 0.5 % within 1 %
    ("true", "0.01", "102", "102"),     # 2 % > 1 %
])
def test_average_price_adoption(db, use_ws, threshold, event_avg, expected):
    if use_ws is not None:
        db.execute(f"SET pm.use_ws_avg_price = '{use_ws}'")
    if threshold is not None:
        db.execute(f"SET pm.avg_price_diff_threshold = '{threshold}'")
    open_long(db)
    apply_position(db, raw_record("Buy", "2", event_avg, "100", minute=10))
    row = position(db)
    assert row["average_entry_price"] == D(expected)
    assert row["size"] == 2
    st = fold(db, row["id"])                           # an adopted average is recorded in the ledger
    assert st["avg_price"] == row["average_entry_price"]


def test_adopted_average_then_fill_builds_on_it(db):
    open_long(db)
    apply_position(db, raw_record("Buy", "2", "110", "100", minute=10))
    apply_order(db, exec_a("later", "Buy", "2", "130", "0", 20))
    row = position(db)
    assert (row["size"], row["average_entry_price"]) == (4, 120)
    assert fold(db, row["id"])["avg_price"] == 120


# ---------------------------------------------------------------------------------------------
# Size: never overwritten, discrepancy recorded
# ---------------------------------------------------------------------------------------------

def test_size_is_not_overwritten_but_discrepancy_recorded(db):
    open_long(db, "1")
    before_count = counter(db, "%discrep%")
    apply_position(db, raw_record("Buy", "1.5", "100", "100", minute=10))
    row = position(db)
    assert row["size"] == 1
    rows = db.execute("SELECT field, stored_value, expected_value, source FROM pm.discrepancies "
                      "WHERE position_id = %s", (row["id"],)).fetchall()
    assert len(rows) == 1
    field, stored, expected, source = rows[0]
    assert field == "size" and D(stored) == 1 and D(expected) == D("1.5") and source == "exchange"
    assert counter(db, "%discrep%") == before_count + 1


def test_size_difference_below_threshold_is_no_discrepancy(db):
    open_long(db, "1")
    apply_position(db, raw_record("Buy", "1.00001", "100", "100", minute=10))
    assert db.execute("SELECT count(*) FROM pm.discrepancies").fetchone()[0] == 0


def test_flat_side_empty_on_open_position_is_a_discrepancy(db):
    row = open_long(db, "1")
    apply_position(db, raw_record("", "0", "0", "100", minute=10))
    assert position(db)["size"] == 1
    (expected,) = db.execute("SELECT expected_value FROM pm.discrepancies WHERE position_id = %s",
                             (row["id"],)).fetchone()
    assert D(expected) == 0


def test_flat_side_empty_on_flat_position_agrees(db):
    apply_order(db, exec_a("o", "Buy", "1", "100", "0", 0))
    apply_order(db, exec_a("c", "Sell", "1", "100", "0", 1))
    apply_position(db, raw_record("", "0", "0", "100", minute=10))
    assert db.execute("SELECT count(*) FROM pm.discrepancies").fetchone()[0] == 0
    assert position(db)["size"] == 0


def test_short_report_signed_by_side(db):
    apply_order(db, exec_a("s", "Sell", "2", "100", "0", 0))
    apply_position(db, raw_record("Sell", "2", "100", "100", minute=10))
    assert db.execute("SELECT count(*) FROM pm.discrepancies").fetchone()[0] == 0


# ---------------------------------------------------------------------------------------------
# Staleness and the no-change path
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("minute, seq", [(9, 99), (10, 4), (10, 5)])
def test_stale_event_has_no_effect_and_is_counted(db, minute, seq):
    open_long(db)
    assert apply_position(db, raw_record("Buy", "2", "100", "110", minute=10, seq=5))["status"] == "applied"
    before, before_counts = position(db), counts(db)
    stale_before = counter(db, "%stale%")
    res = apply_position(db, raw_record("Buy", "3", "150", "120", minute=minute, seq=seq))
    assert res["status"] == "stale"
    assert position(db) == before
    assert counts(db) == before_counts
    assert counter(db, "%stale%") == stale_before + 1


def test_newer_by_seq_at_same_time_applies(db):
    open_long(db)
    apply_position(db, raw_record("Buy", "2", "100", "110", minute=10, seq=5))
    assert apply_position(db, raw_record("Buy", "2", "100", "111", minute=10, seq=6))["status"] == "applied"
    assert position(db)["current_price"] == 111


def test_no_change_path_does_not_bump_version_or_write_outbox(db):
    open_long(db)
    apply_position(db, raw_record("Buy", "2", "100", "110", minute=10, seq=1))
    before = position(db)
    n_outbox = len(outbox_rows(db))
    res = apply_position(db, raw_record("Buy", "2", "100", "110", minute=11, seq=2))
    assert res["status"] != "applied"
    after = position(db)
    assert after["version"] == before["version"]
    assert after["last_updated"] == before["last_updated"]
    assert (after["current_price"], after["unrealized_pnl"]) == (before["current_price"], before["unrealized_pnl"])
    assert len(outbox_rows(db)) == n_outbox


def test_exchange_change_adds_one_outbox_row_in_same_transaction(db, connect):
    open_long(db)
    before, before_counts = position(db), counts(db)
    conn = connect()
    assert apply_position(conn, raw_record("Buy", "2", "100", "120", minute=10))["status"] == "applied"
    conn.rollback()
    assert position(db) == before and counts(db) == before_counts
    apply_position(db, raw_record("Buy", "2", "100", "120", minute=10))
    assert len(outbox_rows(db)) == before_counts["pm.outbox"] + 1
    assert position(db)["version"] == before["version"] + 1


def test_adopted_average_from_a_report_older_than_the_last_fill(db):
    open_long(db)                                              # Buy 2 @ 100 at minute 0
    apply_order(db, exec_a("later", "Buy", "2", "130", "0", 20))
    res = apply_position(db, raw_record("Buy", "2", "110", "100", minute=10))
    assert res["status"] == "applied"
    row = position(db)
    assert (row["size"], row["average_entry_price"]) == (4, 120)   # correction at 10, then the fill at 20
    assert fold(db, row["id"])["avg_price"] == 120


def test_created_from_report_then_later_fill_adds(db):
    apply_position(db, raw_record("Buy", "1", "100", "100", minute=10))
    apply_order(db, exec_a("after", "Buy", "1", "110", "0", 20))
    row = position(db)
    assert (row["size"], row["average_entry_price"]) == (2, 105)
    st = fold(db, row["id"])
    assert (st["size"], st["avg_price"]) == (row["size"], row["average_entry_price"])


def test_created_from_report_then_older_fill_is_already_in_it(db):
    # README/COMMENT decision: a position created from a report holds every fill older than the report
    apply_position(db, raw_record("Buy", "1", "100", "100", minute=10))
    assert apply_order(db, exec_a("before", "Buy", "1", "100", "0.1", 5))["status"] == "applied"
    row = position(db)
    assert (row["size"], row["average_entry_price"]) == (1, 100)
    assert row["realized_pnl"] == D("-0.1")
    st = fold(db, row["id"])
    assert (st["size"], st["avg_price"], st["realized"]) == (row["size"], row["average_entry_price"], row["realized_pnl"])
