"""SQL of a position's life by hand (sql/repeatable/88_manual.sql): opened as a manual execution in
the ledger, deleted once flat (archived; ledger, audit trail and discrepancies kept; versions go on
after a re-open), many positions' metadata in one all-or-nothing call, a price set through PATCH,
positions named by id (pm.position_key), and the portfolio totals of the summary."""
from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal

import pytest

from tests.sql.calls import D, call, fill, push_prices, sqlstate_of
from tests.sql.helpers import apply_order, apply_position, counts, fold, order_b, outbox_rows, position

WAIT_LIMIT = 20


def open_(db, body, trace="t-open", actor="key:ops"):
    return call(db, "extras_open_position", body=json.dumps(body), trace=trace, actor=actor)


def delete(db, asset="BTCUSDT", mode="one-way", version=None, trace="t-delete", actor="key:admin"):
    return call(db, "extras_delete_position", asset=asset, mode=mode, expected_version=version, trace=trace,
                actor=actor)


def close(db, asset="BTCUSDT", price="100", mode="one-way"):
    return call(db, "extras_close_position", asset=asset, mode=mode, exit_price=D(price), expected_version=None,
                trace="t-close", actor="key:ops")


def bulk(db, ids, updates, trace="t-bulk"):
    return call(db, "extras_bulk_update_positions", body=json.dumps({"position_ids": ids, "updates": updates}),
                trace=trace, actor="key:ops")


def ledger(db, position_id):
    return db.execute("SELECT kind, source, side, qty, price, exec_type, leg FROM pm.executions "
                      "WHERE position_id = %s ORDER BY exec_time, seq, exec_key", (position_id,)).fetchall()


def wait_until_blocked(db, pid: int) -> None:
    for _ in range(WAIT_LIMIT * 100):
        row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"backend {pid} never waited on a lock")


def in_thread(work):
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = work()
        except BaseException as exc:  # the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# ------------------------------------------------------------------ open by hand

def test_open_is_one_manual_execution_in_the_ledger_with_the_metadata_given(db):
    result = open_(db, {"asset": "btcusdt", "side": "long", "quantity": "1.5", "entry_price": "50000",
                        "stop_loss": "48000", "strategy": "momentum", "notes": "entry on breakout"})
    assert result["status"] == "created"
    pos = result["position"]
    assert (pos["asset"], pos["mode"], pos["side"], pos["size"], pos["average_entry_price"], pos["version"]) == \
        ("BTCUSDT", "one-way", "long", "1.5", "50000", 1)
    assert (pos["stop_loss"], pos["strategy"], pos["notes"], pos["take_profit"]) == \
        ("48000", "momentum", "entry on breakout", None)
    row = position(db)
    assert ledger(db, row["id"]) == [("trade", "manual", "Buy", Decimal("1.5"), Decimal("50000"), "ManualOpen", 0)]
    st = fold(db, row["id"])
    assert (st["size"], st["avg_price"], st["realized"]) == (row["size"], row["average_entry_price"], 0)
    (audit,) = outbox_rows(db, row["id"])
    assert (audit["source"], audit["action"], audit["actor"], audit["trace_id"], audit["version"]) == \
        ("manual", "open", "key:ops", "t-open", 1)
    assert audit["detail"]["execution"]["side"] == "Buy" and audit["detail"]["metadata"]["stop_loss"] == "48000"
    assert call(db, "api_validate_position", asset="BTCUSDT", mode="one-way", fix=False, trace=None,
                actor=None)["is_valid"]


def test_open_hedge_short_is_the_short_leg_and_open_twice_is_55000_without_a_write(db):
    pos = open_(db, {"asset": "ETHUSDT", "side": "short", "quantity": 2, "entry_price": 3000.5, "mode": "hedge"})["position"]
    assert (pos["side"], pos["short_size"], pos["short_avg_price"], pos["long_size"]) == ("short", "2", "3000.5", "0")
    assert ledger(db, pos["id"])[0][2:] == ("Sell", Decimal("2"), Decimal("3000.5"), "ManualOpen", 2)
    before = counts(db)
    state, message = sqlstate_of(db, "extras_open_position", body=json.dumps(
        {"asset": "ETHUSDT", "side": "long", "quantity": "1", "entry_price": "3000", "mode": "hedge"}),
        trace=None, actor=None)
    assert state == "55000" and "already open" in message and "ETHUSDT/hedge" in message
    assert counts(db) == before


def test_open_again_after_a_close_starts_a_new_holding_with_only_the_new_metadata(db):
    open_(db, {"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "100", "stop_loss": "90"})
    close(db, price="110")
    pos = open_(db, {"asset": "BTCUSDT", "side": "short", "quantity": "2", "entry_price": "120"})["position"]
    assert (pos["side"], pos["size"], pos["average_entry_price"], pos["realized_pnl"], pos["version"]) == \
        ("short", "-2", "120", "10", 3)
    assert pos["stop_loss"] is None       # the stop-loss of the earlier holding is not carried over
    row = position(db)
    assert [r[2] for r in ledger(db, row["id"])] == ["Buy", "Sell", "Sell"]
    st = fold(db, row["id"])
    assert (st["size"], st["avg_price"], st["realized"]) == (Decimal(-2), Decimal(120), Decimal(10))
    stats = call(db, "extras_trade_statistics")
    assert (stats["closed_holdings"], stats["open_holdings"], stats["winning_holdings"]) == (1, 1, 1)


@pytest.mark.parametrize("body, field", [
    ({"side": "long", "quantity": "1", "entry_price": "1"}, "asset"),
    ({"asset": "BTC USDT", "side": "long", "quantity": "1", "entry_price": "1"}, "asset"),
    ({"asset": " BTCUSDT", "side": "long", "quantity": "1", "entry_price": "1"}, "asset"),
    ({"asset": True, "side": "long", "quantity": "1", "entry_price": "1"}, "asset"),
    ({"asset": "12345", "side": "long", "quantity": "1", "entry_price": "1"}, "asset"),
    ({"asset": "BTCUSDT", "side": "Buy", "quantity": "1", "entry_price": "1"}, "side"),
    ({"asset": "BTCUSDT", "side": "LONG", "quantity": "1", "entry_price": "1"}, "side"),
    ({"asset": "BTCUSDT", "quantity": "1", "entry_price": "1"}, "side"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "0", "entry_price": "1"}, "quantity"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "0.000000001", "entry_price": "1"}, "quantity"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "NaN", "entry_price": "1"}, "quantity"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "-5"}, "entry_price"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "1e12"}, "entry_price"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1"}, "entry_price"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "1", "mode": "both"}, "mode"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "1", "mode": None}, "mode"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "1", "stop_loss": "-1"}, "stop_loss"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "1", "strategy": "x" * 65}, "strategy"),
    ({"asset": "BTCUSDT", "side": "long", "quantity": "1", "entry_price": "1", "size": "1"}, "size"),
    ([], "body"),
])
def test_open_with_bad_input_is_22023_naming_the_field_and_writes_nothing(db, body, field):
    before = counts(db)
    state, message = sqlstate_of(db, "extras_open_position", body=json.dumps(body), trace=None, actor=None)
    assert state == "22023" and f"invalid field {field}" in message, message
    assert counts(db) == before


# ------------------------------------------------------------------ delete

def test_delete_only_when_flat_then_gone_with_its_audit_kept_and_its_snapshots_archived(db):
    fill(db, "BTCUSDT", "Buy", "2", "100")
    row = position(db)
    call(db, "api_snapshot_position", asset="BTCUSDT", mode="one-way", trace="t-snap")
    state, message = sqlstate_of(db, "extras_delete_position", asset="BTCUSDT", mode="one-way",
                                 expected_version=None, trace=None, actor=None)
    assert state == "55000" and "close it first" in message
    close(db, price="110")
    # the exchange's last report, and a discrepancy recorded against the position
    apply_position(db, {"event_type": "position", "payload": {"symbol": "BTCUSDT", "mode": "one-way", "size": "0.5",
                                                              "side": "Buy", "avgPrice": "100", "markPrice": "111",
                                                              "timestamp": "2025-01-27T11:00:00Z"}})
    assert db.execute("SELECT count(*) FROM pm.discrepancies WHERE position_id = %s", (row["id"],)).fetchone()[0] == 1
    flat = position(db)
    history_before = len(outbox_rows(db, row["id"]))
    ledger_before = ledger(db, row["id"])
    assert sqlstate_of(db, "extras_delete_position", asset="BTCUSDT", mode="one-way", expected_version=1,
                       trace=None, actor=None)[0] == "PM412"

    result = delete(db, version=flat["version"])
    assert (result["status"], result["id"], result["asset"], result["mode"], result["version"]) == \
        ("deleted", str(row["id"]), "BTCUSDT", "one-way", flat["version"])
    assert result["kept"] == {"ledger_rows": 2, "history_entries": history_before - 1, "snapshots_archived": 1}
    # gone: the shared table, the views, the API's reads
    assert position(db) is None
    assert db.execute("SELECT count(*) FROM pm.v_positions").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM public.position_snapshots").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM pm.exchange_state").fetchone()[0] == 0
    assert db.execute("SELECT pm.list_positions()").fetchone()[0]["total"] == 0
    state, message = sqlstate_of(db, "extras_position_history", asset=str(row["id"]), mode=None, limit=10, offset=0)
    assert state == "P0002" and "was deleted at" in message
    # kept: ledger, audit trail, discrepancies, under the old id
    assert ledger(db, row["id"]) == ledger_before
    assert len(outbox_rows(db, row["id"])) == history_before
    assert db.execute("SELECT count(*) FROM pm.discrepancies WHERE position_id = %s", (row["id"],)).fetchone()[0] == 1
    # archived: the row, its Position, the exchange state, the snapshot
    archived = db.execute("SELECT version, position, row_data, exchange_state, snapshots, deleted_by, trace_id "
                          "FROM pm.deleted_positions WHERE id = %s", (row["id"],)).fetchone()
    assert archived[0] == flat["version"] and archived[1]["realized_pnl"] == "20" and archived[2]["asset"] == "BTCUSDT"
    assert archived[3][0]["size"] == 0.5 and archived[4:] == (1, "key:admin", "t-delete")
    (snap,) = db.execute("SELECT snapshot FROM pm.deleted_position_snapshots WHERE position_id = %s",
                         (row["id"],)).fetchall()
    assert snap[0]["size"] == 2 and snap[0]["snapshot_data"]["size"] == "2"
    assert db.execute("SELECT value FROM pm.counters WHERE name = 'positions_deleted'").fetchone()[0] == 1


def test_a_position_of_a_deleted_asset_is_new_and_its_versions_continue(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    old = position(db)
    close(db, price="150")
    deleted_version = delete(db)["version"]
    pos = fill(db, "BTCUSDT", "Sell", "3", "200", at="2025-01-28T10:00:00Z")
    assert pos["id"] != str(old["id"]) and pos["version"] == deleted_version + 1
    assert (pos["size"], pos["realized_pnl"]) == ("-3", "0")     # nothing of the deleted row's PnL
    st = fold(db, pos["id"])
    assert (st["size"], st["avg_price"], st["realized"]) == (Decimal(-3), Decimal(200), 0)
    assert call(db, "api_validate_position", asset="BTCUSDT", mode="one-way", fix=False, trace=None,
                actor=None)["is_valid"]
    # the deleted holding left the statistics with the row
    stats = call(db, "extras_trade_statistics")
    assert (stats["closed_holdings"], stats["open_holdings"], stats["total_positions"]) == (0, 1, 1)


def test_an_order_in_flight_across_a_deletion_goes_on_into_the_new_position(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    assert apply_order(db, order_b("o-1", "partially_filled", "Sell", "1", "110", minute=1))["status"] == "applied"
    delete(db)
    result = apply_order(db, order_b("o-1", "filled", "Sell", "1.5", "110", minute=2))
    assert result["status"] == "applied", result
    pos = position(db)
    assert (pos["size"], pos["average_entry_price"]) == (Decimal("-0.5"), Decimal("110"))


def test_delete_waits_for_a_snapshot_being_written_and_archives_it(db, connect):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    close(db)
    s1, s2 = connect(), connect()
    s1.execute("SELECT pm.snapshot_position('BTCUSDT', 'one-way', 't')")       # not committed yet
    thread, outcome = in_thread(lambda: (delete(s2), s2.commit()))
    wait_until_blocked(db, s2.info.backend_pid)
    s1.commit()
    thread.join(WAIT_LIMIT)
    assert "error" not in outcome, outcome
    assert outcome["result"][0]["kept"]["snapshots_archived"] == 1
    assert db.execute("SELECT count(*) FROM pm.deleted_position_snapshots").fetchone()[0] == 1


def test_delete_never_removes_a_position_that_a_fill_in_flight_opens(db, connect):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    close(db)
    s1, s2 = connect(), connect()
    fill(s1, "BTCUSDT", "Buy", "1", "120", at="2025-01-28T10:00:00Z")        # not committed yet
    thread, outcome = in_thread(lambda: delete(s2))
    wait_until_blocked(db, s2.info.backend_pid)
    s1.commit()
    thread.join(WAIT_LIMIT)
    assert outcome["error"].sqlstate == "55000"
    s2.rollback()
    assert position(db)["size"] == 1


def test_a_fill_waiting_for_a_deletion_makes_a_new_position(db, connect):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    close(db)
    old = position(db)
    s1, s2 = connect(), connect()
    delete(s1)                                                                # not committed yet
    thread, outcome = in_thread(lambda: (fill(s2, "BTCUSDT", "Buy", "2", "130", at="2025-01-28T10:00:00Z"),
                                         s2.commit()))
    wait_until_blocked(db, s2.info.backend_pid)
    s1.commit()
    thread.join(WAIT_LIMIT)
    assert "error" not in outcome, outcome
    new = position(db)
    assert new["id"] != old["id"] and (new["size"], new["version"]) == (2, old["version"] + 1)


def test_archived_snapshots_keep_the_snapshot_retention(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    close(db)
    call(db, "api_snapshot_position", asset="BTCUSDT", mode="one-way", trace=None)
    db.execute("UPDATE public.position_snapshots SET snapshot_timestamp = snapshot_timestamp - interval '40 days'")
    delete(db)
    fill(db, "ETHUSDT", "Buy", "1", "100")
    call(db, "api_snapshot_position", asset="ETHUSDT", mode="one-way", trace=None)
    (deleted,) = db.execute("SELECT pm.cleanup_snapshots(30, 10)").fetchone()
    assert deleted == 1
    assert db.execute("SELECT count(*) FROM pm.deleted_position_snapshots").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM public.position_snapshots").fetchone()[0] == 1


# ------------------------------------------------------------------ positions by id

def test_position_key_by_symbol_and_by_id(db):
    pos = fill(db, "XRPUSDT", "Buy", "10", "0.5", mode="hedge", position_idx=1)
    key = lambda ref, mode: db.execute("SELECT * FROM pm.position_key(%s, %s)", (ref, mode)).fetchone()  # noqa: E731
    assert key("xrpusdt", None) == ("XRPUSDT", "one-way")
    assert key(pos["id"], None) == ("XRPUSDT", "hedge")
    assert key(pos["id"].upper(), "hedge") == ("XRPUSDT", "hedge")
    for ref, mode in [(pos["id"], "one-way"), (str(uuid.uuid4()), None)]:
        with pytest.raises(Exception) as info:
            key(ref, mode)
        assert info.value.sqlstate == "P0002" and "not found" in str(info.value)
    assert call(db, "extras_position_as_of", asset=pos["id"], mode=None, as_of="2025-01-28T00:00:00Z")["size"] == "10"


# ------------------------------------------------------------------ bulk update, PATCH current_price

def test_bulk_update_is_all_or_nothing_and_audits_each_position(db):
    ids = [fill(db, asset, "Buy", "1", "100")["id"] for asset in ("BTCUSDT", "ETHUSDT", "ADAUSDT")]
    call(db, "extras_update_position_meta", asset="ETHUSDT", mode="one-way", patch='{"stop_loss": "95"}',
         expected_version=None, trace=None, actor=None)
    result = bulk(db, [ids[2], ids[1], ids[0].upper()], {"stop_loss": "95", "strategy": "grid"})
    assert (result["updated"], result["unchanged"]) == (3, 0)
    assert [p["asset"] for p in result["positions"]] == ["ADAUSDT", "ETHUSDT", "BTCUSDT"]
    assert {(p["stop_loss"], p["strategy"]) for p in result["positions"]} == {("95", "grid")}
    audits = db.execute("SELECT position_id::text, actor, trace_id, detail FROM pm.outbox "
                        "WHERE action = 'metadata' AND trace_id = 't-bulk' ORDER BY id").fetchall()
    assert sorted(a[0] for a in audits) == sorted(ids) and {a[1] for a in audits} == {"key:ops"}
    assert bulk(db, ids, {"stop_loss": "95", "strategy": "grid"})["unchanged"] == 3

    before = counts(db)
    unknown = str(uuid.uuid4())
    state, message = sqlstate_of(db, "extras_bulk_update_positions",
                                 body=json.dumps({"position_ids": ids + [unknown], "updates": {"notes": "x"}}),
                                 trace=None, actor=None)
    assert state == "P0002" and unknown in message
    for body, field in [({"position_ids": ids, "updates": {"stop_loss": "-1"}}, "stop_loss"),
                        ({"position_ids": [ids[0], ids[0]], "updates": {"notes": "x"}}, "position_ids"),
                        ({"position_ids": [ids[0], ids[0].upper()], "updates": {"notes": "x"}}, "position_ids"),
                        ({"position_ids": ["BTCUSDT"], "updates": {"notes": "x"}}, "position_ids[0]"),
                        ({"position_ids": [], "updates": {"notes": "x"}}, "position_ids"),
                        ({"position_ids": ids, "updates": {}}, "updates"),
                        ({"position_ids": ids, "updates": {"current_price": "1"}}, "current_price"),
                        ({"position_ids": ids}, "updates"),
                        ({"position_ids": ids, "updates": {"notes": "x"}, "mode": "hedge"}, "mode")]:
        state, message = sqlstate_of(db, "extras_bulk_update_positions", body=json.dumps(body), trace=None, actor=None)
        assert state == "22023" and f"invalid field {field}" in message, (body, message)
    assert counts(db) == before


def test_patch_current_price_takes_the_price_path_for_every_mode_of_the_symbol(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "BTCUSDT", "Buy", "2", "100", mode="hedge", position_idx=1)
    state, _ = sqlstate_of(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way",
                           patch='{"current_price": "120"}', expected_version=7, trace=None, actor=None)
    assert state == "PM412"
    assert position(db)["current_price"] is None          # If-Match is checked before the price
    result = call(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way",
                  patch='{"current_price": "120", "notes": "repriced"}', expected_version=1, trace="t-p", actor="key:ops")
    pos = result["position"]
    assert (result["status"], pos["current_price"], pos["unrealized_pnl"], pos["notes"], pos["version"]) == \
        ("applied", "120", "20", "repriced", 3)
    hedge = position(db, mode="hedge")
    assert (hedge["current_price"], hedge["unrealized_pnl"]) == (120, 40)
    actions = db.execute("SELECT action, source, actor FROM pm.outbox WHERE trace_id = 't-p' ORDER BY id").fetchall()
    assert actions == [("price", "manual", "key:ops"), ("price", "manual", "key:ops"), ("metadata", "manual", "key:ops")]
    again = call(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way", patch='{"current_price": 120}',
                 expected_version=None, trace=None, actor=None)
    assert (again["status"], again["position"]["version"]) == ("unchanged", 3)
    for patch in ('{"current_price": null}', '{"current_price": "0"}', '{"current_price": "x"}'):
        state, message = sqlstate_of(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way", patch=patch,
                                     expected_version=None, trace=None, actor=None)
        assert state == "22023" and "current_price" in message


# ------------------------------------------------------------------ summary

def test_summary_counts_and_totals_match_the_portfolio(db):
    fill(db, "BTCUSDT", "Buy", "2", "100", fee="1")
    fill(db, "ETHUSDT", "Sell", "1", "50")
    fill(db, "ADAUSDT", "Buy", "10", "1")
    close(db, "ADAUSDT", price="1.5")
    push_prices(db, {"BTCUSDT": "110", "ETHUSDT": "40"})
    stats = call(db, "extras_trade_statistics")
    (body,) = db.execute("SELECT pm.portfolio_json(NULL)").fetchone()
    assert (stats["total_positions"], stats["open_positions"], stats["closed_positions"]) == (3, 2, 1)
    assert D(stats["total_market_value"]) == Decimal(2 * 110 + 40) == D(body["total_exposure_usdt"])
    assert D(stats["total_unrealized_pnl"]) == Decimal(20 + 10) == D(body["total_unrealized_pnl_usdt"])
    assert D(stats["total_realized_pnl"]) == Decimal(-1 + 5) == D(body["total_realized_pnl_usdt"])
    row = db.execute("SELECT total_positions, closed_positions, total_market_value FROM pm.v_trade_statistics").fetchone()
    assert row == (3, 1, Decimal(260))


def test_open_refuses_a_size_whose_pnl_at_the_known_price_could_not_be_stored(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    close(db, price="100")
    push_prices(db, {"BTCUSDT": "900000000"})
    before = counts(db)
    state, message = sqlstate_of(db, "extras_open_position", body=json.dumps(
        {"asset": "BTCUSDT", "side": "long", "quantity": "500000", "entry_price": "1"}), trace=None, actor=None)
    assert state == "22023" and "invalid field quantity" in message and "10^12" in message
    assert counts(db) == before


def test_a_price_whose_pnl_could_not_be_stored_is_22023_naming_the_symbol(db):
    fill(db, "BTCUSDT", "Buy", "13300", "93356899.96")
    before = counts(db)
    for query, args in [("extras_update_position_meta", dict(asset="BTCUSDT", mode="one-way",
                                                             patch='{"current_price": "999999999"}', expected_version=None,
                                                             trace=None, actor=None)),
                        ("extras_set_prices", dict(prices='{"BTCUSDT": "999999999"}', trace=None, actor=None))]:
        state, message = sqlstate_of(db, query, **args)
        assert state == "22023" and "invalid field BTCUSDT" in message and "10^12" in message, message
    assert counts(db) == before
