"""Validation at the SQL level: against the ledger fold and the exchange's last report,
with and without fix; after a fix the ledger fold and the stored position agree."""
from __future__ import annotations

from decimal import Decimal as D

import psycopg
import pytest

from tests.sql.calls import insert_legacy
from tests.sql.helpers import apply_order, apply_position, at_ms, counter, exec_a, fold, messages, position


def validate(db, asset="BTCUSDT", mode="one-way", fix=False):
    return db.execute("SELECT pm.validate_position(%s, %s, %s, 'tr-val')", (asset, mode, fix)).fetchone()[0]


def report(side, size, avg, minute, idx=0, realized="0"):
    return {"positionIdx": idx, "symbol": "BTCUSDT", "side": side, "size": str(size), "avgPrice": str(avg),
            "markPrice": str(avg), "cumRealisedPnl": realized, "updatedTime": at_ms(minute), "seq": minute}


def assert_fold_agrees(db, row):
    st = fold(db, row["id"])
    assert (st["size"], st["avg_price"], st["realized"]) == (row["size"], row["average_entry_price"], row["realized_pnl"])
    if row["mode"] == "hedge":
        assert (st["long_size"], st["short_size"]) == (row["long_size"], row["short_size"])


def test_consistent_position_is_valid_and_untouched(db):
    apply_order(db, exec_a("f1", "Buy", 2, 100, "0", 0))
    before = position(db)
    res = validate(db, fix=True)
    assert res["is_valid"] is True and res["discrepancies"] == []
    assert position(db) == before
    assert counter(db, "validations") == 1


def test_stored_state_differing_from_the_ledger_is_reported_and_fixed(db):
    apply_order(db, exec_a("f1", "Buy", 2, 100, "0", 0))
    apply_order(db, exec_a("f2", "Sell", 1, 110, "0", 1))
    db.execute("UPDATE public.positions SET size = 5, realized_pnl = 0")        # corrupted outside the service
    res = validate(db)
    assert res["is_valid"] is False
    found = {(d["field"], d["source"]): (D(d["stored"]), D(d["expected"])) for d in res["discrepancies"]}
    assert found[("size", "ledger")] == (5, 1)
    assert found[("realized_pnl", "ledger")] == (0, 10)
    assert position(db)["size"] == 5                                           # no fix without fix
    version = position(db)["version"]

    res = validate(db, fix=True)
    assert res["fixed"] is True
    row = position(db)
    assert (row["size"], row["average_entry_price"], row["realized_pnl"]) == (1, 100, 10)
    assert row["version"] == version + 1
    assert_fold_agrees(db, row)
    assert messages(db)[-1]["payload"]["update_source"] == "validation"
    assert validate(db)["is_valid"] is True
    assert counter(db, "validation_fixes") == 1
    assert counter(db, "validation_discrepancies") >= 4


def test_exchange_size_and_average_win_on_fix(db):
    apply_order(db, exec_a("f1", "Buy", 2, 100, "0", 0))
    apply_position(db, report("Buy", "2.5", "104", 10))          # size differs (recorded), average adopted
    row = position(db)
    assert (row["size"], row["average_entry_price"]) == (2, 104)
    res = validate(db)
    fields = {(d["field"], d["source"]) for d in res["discrepancies"]}
    assert ("size", "exchange") in fields and res["is_valid"] is False
    validate(db, fix=True)
    row = position(db)
    assert (row["size"], row["average_entry_price"]) == (D("2.5"), 104)
    assert_fold_agrees(db, row)
    assert validate(db)["is_valid"] is True
    # a later fill builds on the corrected position
    apply_order(db, exec_a("f2", "Buy", "0.5", 104, "0", 20))
    row = position(db)
    assert row["size"] == 3
    assert_fold_agrees(db, row)


def test_exchange_report_older_than_the_last_fill_is_not_compared(db):
    apply_order(db, exec_a("f1", "Buy", 2, 100, "0", 0))
    apply_position(db, report("Buy", "2", "100", 10))
    apply_order(db, exec_a("f2", "Buy", 1, 100, "0", 20))          # the report (minute 10) predates it
    res = validate(db)
    assert res["is_valid"] is True
    assert res["notes"], "the skipped comparison is explained"


def test_hedge_leg_fix(db):
    apply_order(db, exec_a("h1", "Buy", 2, 100, "0", 0, mode="hedge", position_idx=1))
    apply_order(db, exec_a("h2", "Sell", 1, 120, "0", 1, mode="hedge", position_idx=2))
    apply_position(db, report("Sell", "1.5", "120", 10, idx=2))
    res = validate(db, mode="hedge", fix=True)
    assert ("short_size", "exchange") in {(d["field"], d["source"]) for d in res["discrepancies"]}
    row = position(db, mode="hedge")
    assert (row["long_size"], row["short_size"], row["size"]) == (2, D("1.5"), D("0.5"))
    assert_fold_agrees(db, row)


def test_position_without_authoritative_source_is_never_fixed_to_zero(db):
    insert_legacy(db, "INSERT INTO public.positions (asset, size, average_entry_price, realized_pnl, mode, version) "
                      "VALUES ('OLDUSDT', 7, 3, 1, 'one-way', 4)")
    before = position(db, "OLDUSDT")
    res = validate(db, "OLDUSDT", fix=True)
    assert res["is_valid"] is False and res.get("no_authoritative_source") is True
    assert "OLDUSDT" in res["error_message"]
    assert position(db, "OLDUSDT") == before


def test_validate_all_and_unknown_position(db):
    apply_order(db, exec_a("f1", "Buy", 1, 100, "0", 0))
    apply_order(db, exec_a("f2", "Buy", 1, 100, "0", 0, asset="ETHUSDT"))
    db.execute("UPDATE public.positions SET size = 9 WHERE asset = 'ETHUSDT'")
    summary = db.execute("SELECT pm.validate_all(true)").fetchone()[0]
    assert (summary["positions"], summary["invalid"], summary["fixed"]) == (2, 1, 1)
    assert position(db, "ETHUSDT")["size"] == 1
    with pytest.raises(psycopg.errors.NoDataFound):
        validate(db, "NOPEUSDT")
