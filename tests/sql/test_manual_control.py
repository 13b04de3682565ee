"""SQL of manual control (0040): operator metadata with If-Match semantics, the manual close as
ledger executions (one-way, hedge, current price, errors), audit rows with the actor."""
from __future__ import annotations

import json

import pytest

from tests.sql.calls import D, call, fill, insert_legacy, push_prices, sqlstate_of
from tests.sql.helpers import position


def meta(db, asset="BTCUSDT", patch=None, version=None, mode="one-way", actor="key:ops", trace="t-meta"):
    return call(db, "extras_update_position_meta", asset=asset, mode=mode, patch=json.dumps(patch),
                expected_version=version, trace=trace, actor=actor)


def close(db, asset="BTCUSDT", price=None, version=None, mode="one-way", actor="key:ops", trace="t-close"):
    return call(db, "extras_close_position", asset=asset, mode=mode, exit_price=price,
                expected_version=version, trace=trace, actor=actor)


def audit_rows(db, asset="BTCUSDT"):
    return db.execute("SELECT o.version, o.source, o.action, o.actor, o.trace_id, o.detail FROM pm.outbox o "
                      "JOIN public.positions p ON p.id = o.position_id WHERE p.asset = %s "
                      "AND o.event_type = 'position_updated' ORDER BY o.id", (asset,)).fetchall()


def test_metadata_merge_patch_bumps_version_and_is_audited_with_the_actor(db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    result = meta(db, patch={"stop_loss": "48000.5", "strategy": " momentum ", "notes": "entry on breakout"}, version=1)
    assert result["status"] == "applied"
    pos = result["position"]
    assert (pos["stop_loss"], pos["take_profit"], pos["strategy"], pos["notes"]) == \
        ("48000.5", None, "momentum", "entry on breakout")
    assert pos["version"] == 2 and pos["size"] == "1"
    # absent keys are kept, null clears
    pos = meta(db, patch={"take_profit": 52000, "notes": None}, version=2)["position"]
    assert (pos["stop_loss"], pos["take_profit"], pos["strategy"], pos["notes"]) == ("48000.5", "52000", "momentum", None)
    assert pos["version"] == 3
    last = audit_rows(db)[-1]
    assert last[:5] == (3, "manual", "metadata", "key:ops", "t-meta")
    assert last[5] == {"changes": {"take_profit": {"from": None, "to": "52000"},
                                   "notes": {"from": "entry on breakout", "to": None}}}


def test_same_values_again_change_nothing(db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    meta(db, patch={"stop_loss": "48000"})
    before = len(audit_rows(db))
    result = meta(db, patch={"stop_loss": "48000.000"})
    assert result["status"] == "unchanged" and result["position"]["version"] == 2
    assert len(audit_rows(db)) == before


def test_version_mismatch_raises_pm412_with_the_current_version_and_writes_nothing(db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    fill(db, "BTCUSDT", "Buy", "1", "51000")
    state, message = sqlstate_of(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way",
                                 patch='{"stop_loss": "1"}', expected_version=1, trace=None, actor="a")
    assert state == "PM412" and "expected 1, current 2" in message
    assert db.execute("SELECT count(*) FROM pm.position_meta").fetchone()[0] == 0
    assert position(db, "BTCUSDT")["version"] == 2


@pytest.mark.parametrize("patch, field", [
    ({"stop_loss": "0"}, "stop_loss"), ({"stop_loss": "-5"}, "stop_loss"), ({"take_profit": "abc"}, "take_profit"),
    ({"take_profit": "NaN"}, "take_profit"), ({"stop_loss": "1e13"}, "stop_loss"), ({"stop_loss": "0.000000001"}, "stop_loss"),
    ({"strategy": 5}, "strategy"), ({"strategy": "x" * 65}, "strategy"), ({"notes": "n" * 2001}, "notes"),
    ({"notes": ["a"]}, "notes"), ({"size": "1"}, "size"), ({}, "body"), ([1], "body"),
])
def test_bad_metadata_is_22023_naming_the_field(db, patch, field):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    state, message = sqlstate_of(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way",
                                 patch=json.dumps(patch), expected_version=None, trace=None, actor="a")
    assert state == "22023" and f"invalid field {field}" in message
    assert position(db, "BTCUSDT")["version"] == 1


def test_metadata_of_an_unknown_position_is_p0002(db):
    state, _ = sqlstate_of(db, "extras_update_position_meta", asset="NOPEUSDT", mode="one-way",
                           patch='{"notes": "x"}', expected_version=None, trace=None, actor="a")
    assert state == "P0002"


def test_close_one_way_long_at_a_given_price_goes_through_the_ledger(db):
    fill(db, "BTCUSDT", "Buy", "10", "100", fee="0.1")
    fill(db, "BTCUSDT", "Buy", "10", "110", fee="0.11")
    result = close(db, price="120", version=2)
    assert result["status"] == "closed" and result["exit_price"] == "120"
    assert D(result["realized_pnl"]) == 300                     # 20 x (120 - 105), no fee on a manual close
    (execution,) = result["executions"]
    assert (execution["side"], execution["qty"], execution["price"], execution["leg"]) == ("Sell", "20", "120", 0)
    assert execution["exec_key"].startswith("manual:")
    pos = result["position"]
    assert (pos["size"], pos["side"], pos["average_entry_price"], pos["version"]) == ("0", "flat", None, 3)
    assert D(pos["realized_pnl"]) == D("299.79") and pos["closed_at"] is not None
    row = db.execute("SELECT kind, source, side, qty, price, fee FROM pm.executions WHERE exec_key = %s",
                     (execution["exec_key"],)).fetchone()
    assert row == ("trade", "manual", "Sell", D(20), D(120), D(0))
    # the ledger fold and validation agree with the stored position
    assert call(db, "api_validate_position", asset="BTCUSDT", mode="one-way", fix=False, trace=None, actor=None)["is_valid"]
    assert audit_rows(db)[-1][:5] == (3, "manual", "close", "key:ops", "t-close")


def test_close_short_uses_the_current_price_when_none_is_given(db):
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    push_prices(db, {"ETHUSDT": "2900"})
    result = close(db, asset="ethusdt")
    assert result["exit_price"] == "2900" and D(result["realized_pnl"]) == 200
    assert result["executions"][0]["side"] == "Buy"
    assert result["position"]["size"] == "0" and result["position"]["unrealized_pnl"] == "0"


def test_close_without_a_known_price_is_22023_and_a_flat_position_is_55000(db):
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    state, message = sqlstate_of(db, "extras_close_position", asset="ETHUSDT", mode="one-way", exit_price=None,
                                 expected_version=None, trace=None, actor=None)
    assert state == "22023" and "exit_price" in message
    for bad in ("0", "-1", "1e12"):
        state, message = sqlstate_of(db, "extras_close_position", asset="ETHUSDT", mode="one-way", exit_price=D(bad),
                                     expected_version=None, trace=None, actor=None)
        assert state == "22023" and "exit_price" in message
    close(db, asset="ETHUSDT", price="2950")
    state, _ = sqlstate_of(db, "extras_close_position", asset="ETHUSDT", mode="one-way", exit_price=D(1),
                           expected_version=None, trace=None, actor=None)
    assert state == "55000"
    state, _ = sqlstate_of(db, "extras_close_position", asset="ETHUSDT", mode="one-way", exit_price=D(1),
                           expected_version=99, trace=None, actor=None)
    assert state == "PM412"
    state, _ = sqlstate_of(db, "extras_close_position", asset="NOPEUSDT", mode="one-way", exit_price=D(1),
                           expected_version=None, trace=None, actor=None)
    assert state == "P0002"


def test_close_hedge_closes_both_legs_in_one_version(db):
    fill(db, "XRPUSDT", "Buy", "100", "0.5", mode="hedge", position_idx=1)
    fill(db, "XRPUSDT", "Sell", "40", "0.6", mode="hedge", position_idx=2)
    result = close(db, asset="XRPUSDT", mode="hedge", price="0.55")
    assert sorted((e["leg"], e["side"], e["qty"]) for e in result["executions"]) == [(1, "Sell", "100"), (2, "Buy", "40")]
    pos = result["position"]
    assert (pos["long_size"], pos["short_size"], pos["size"], pos["version"]) == ("0", "0", "0", 3)
    assert D(result["realized_pnl"]) == D("5") + D("2")          # 100 x 0.05 + 40 x 0.05
    assert call(db, "api_validate_position", asset="XRPUSDT", mode="hedge", fix=False, trace=None, actor=None)["is_valid"]


def test_close_comes_after_ledger_rows_with_later_exchange_times(db):
    """A fill stamped in the future (clock skew) must not be folded after the close."""
    fill(db, "BTCUSDT", "Buy", "1", "100", at="2099-01-01T00:00:00Z")
    result = close(db, price="110")
    assert result["position"]["size"] == "0"
    assert result["executions"][0]["exec_time"] > "2099-01-01T00:00:00"
    assert call(db, "api_validate_position", asset="BTCUSDT", mode="one-way", fix=False, trace=None, actor=None)["is_valid"]


def get_position(db, asset, mode="one-way"):
    return db.execute("SELECT pm.get_position(%s, %s)", (asset, mode)).fetchone()[0]


def test_position_json_carries_the_metadata_fields(db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    pos = get_position(db, "btcusdt")
    assert {"stop_loss", "take_profit", "strategy", "notes", "size", "version"} <= pos.keys()
    assert get_position(db, "NOPEUSDT") is None


def test_close_of_a_position_older_than_its_ledger_starts_from_its_opening_balance(db):
    insert_legacy(db, "INSERT INTO public.positions (asset, size, average_entry_price, realized_pnl, created_at) "
                      "VALUES ('ADAUSDT', -5, 0.4, 1, '2025-01-01 00:00:00')")
    result = close(db, asset="ADAUSDT", price="0.3")
    assert D(result["realized_pnl"]) == D("0.5") and result["position"]["size"] == "0"
    kinds = db.execute("SELECT kind, source FROM pm.executions ORDER BY exec_time").fetchall()
    assert kinds == [("opening", "validation"), ("trade", "manual")]
    assert call(db, "api_validate_position", asset="ADAUSDT", mode="one-way", fix=False, trace=None, actor=None)["is_valid"]


def test_two_writers_with_the_same_if_match_one_wins_the_other_gets_pm412(db, connect):
    """The version check happens under the row lock: the second writer waits, then sees version 2."""
    fill(db, "BTCUSDT", "Buy", "1", "100")
    first, second = connect(), connect()
    meta(first, patch={"notes": "first"}, version=1)                  # holds the row lock, not committed
    blocked: dict = {}

    def other():
        try:
            meta(second, patch={"notes": "second"}, version=1)
        except Exception as exc:  # noqa: BLE001 - the SQLSTATE is the point
            blocked["error"] = exc
        second.rollback()

    import threading
    thread = threading.Thread(target=other)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()                                          # waiting for the lock
    first.commit()
    thread.join(10)
    assert getattr(blocked.get("error"), "sqlstate", None) == "PM412"
    assert get_position(db, "BTCUSDT")["notes"] == "first"
