"""SQL of trade statistics (0041) and history / as-of (0042): holdings folded from the ledger
(wins, losses, flips, fees, hedge), at-risk positions, the audit trail and as-of reconstruction."""
from __future__ import annotations

import pytest

from tests.sql.calls import D, call, fill, insert_legacy, push_prices, sqlstate_of


def stats(db) -> dict:
    return call(db, "extras_trade_statistics")


def holdings(db, asset):
    return db.execute("SELECT holding_no, side, is_closed, realized_pnl FROM pm.v_holdings WHERE asset = %s "
                      "ORDER BY holding_no", (asset,)).fetchall()


def test_empty_ledger_gives_zeros_and_nulls_not_errors(db):
    s = stats(db)
    assert (s["open_positions"], s["open_holdings"], s["closed_holdings"], s["positions_at_risk"]) == (0, 0, 0, 0)
    assert s["win_rate_pct"] is None and s["profit_factor"] is None and s["largest_position_pct"] is None
    assert db.execute("SELECT count(*) FROM pm.v_trade_statistics").fetchone()[0] == 1


def test_holdings_wins_losses_flip_and_fees(db):
    # BTC: win of 100 - fees 0.3 ; then a loss of -50
    fill(db, "BTCUSDT", "Buy", "1", "1000", fee="0.1", at="2025-01-01T00:00:00Z")
    fill(db, "BTCUSDT", "Sell", "1", "1100", fee="0.2", at="2025-01-01T01:00:00Z")
    fill(db, "BTCUSDT", "Sell", "1", "1000", at="2025-01-02T00:00:00Z")
    fill(db, "BTCUSDT", "Buy", "1", "1050", at="2025-01-02T01:00:00Z")
    # ETH: long 2@100, flip with a sell of 3@90 (closes -20, opens short 1@90), still open
    fill(db, "ETHUSDT", "Buy", "2", "100", at="2025-01-03T00:00:00Z")
    fill(db, "ETHUSDT", "Sell", "3", "90", fee="0.5", at="2025-01-03T01:00:00Z")
    assert holdings(db, "BTCUSDT") == [(1, "long", True, D("99.7")), (2, "short", True, D("-50"))]
    assert holdings(db, "ETHUSDT") == [(1, "long", True, D("-20.5")), (2, "short", False, D("0"))]
    s = stats(db)
    assert (s["closed_holdings"], s["winning_holdings"], s["losing_holdings"], s["open_holdings"]) == (3, 1, 2, 1)
    assert D(s["win_rate_pct"]) == D("33.3333")
    assert D(s["gross_profit"]) == D("99.7") and D(s["gross_loss"]) == D("-70.5")
    assert D(s["profit_factor"]) == (D("99.7") / D("70.5")).quantize(D("0.00000001"))
    assert D(s["average_win"]) == D("99.7") and D(s["average_loss"]) == D("-35.25")
    assert D(s["largest_win"]) == D("99.7") and D(s["largest_loss"]) == D("-50")
    assert D(s["closed_realized_pnl"]) == D("29.2")
    assert s["open_positions"] == 1


def test_late_fill_reassigns_holdings(db):
    """The ledger is folded in execution order: a late fill changes which holding a row belongs to."""
    fill(db, "BTCUSDT", "Buy", "1", "100", at="2025-01-01T00:00:00Z")
    fill(db, "BTCUSDT", "Buy", "1", "100", at="2025-01-01T02:00:00Z")
    assert holdings(db, "BTCUSDT") == [(1, "long", False, D(0))]
    fill(db, "BTCUSDT", "Sell", "1", "110", at="2025-01-01T01:00:00Z")   # delivered late: closes holding 1
    assert holdings(db, "BTCUSDT") == [(1, "long", True, D(10)), (2, "long", False, D(0))]


def test_hedge_holding_spans_until_both_legs_are_flat(db):
    fill(db, "XRPUSDT", "Buy", "10", "1", mode="hedge", position_idx=1, at="2025-01-01T00:00:00Z")
    fill(db, "XRPUSDT", "Sell", "10", "1.2", mode="hedge", position_idx=2, at="2025-01-01T00:01:00Z")
    fill(db, "XRPUSDT", "Sell", "10", "1.1", mode="hedge", position_idx=1, at="2025-01-01T00:02:00Z")
    assert holdings(db, "XRPUSDT") == [(1, "hedge", False, D(1))]
    fill(db, "XRPUSDT", "Buy", "10", "1.3", mode="hedge", position_idx=2, at="2025-01-01T00:03:00Z")
    assert holdings(db, "XRPUSDT") == [(1, "hedge", True, D(0))]


def test_largest_position_pct_and_positions_at_risk(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")      # long, stop 95
    fill(db, "ETHUSDT", "Sell", "1", "100")     # short, stop 105
    fill(db, "SOLUSDT", "Buy", "1", "100")      # long, stop 80: safe
    fill(db, "DOGEUSDT", "Buy", "1", "100")     # no stop-loss
    push_prices(db, {"BTCUSDT": "95", "ETHUSDT": "110", "SOLUSDT": "90", "DOGEUSDT": "5"})
    for asset, stop in (("BTCUSDT", "95"), ("ETHUSDT", "105"), ("SOLUSDT", "80")):
        call(db, "extras_update_position_meta", asset=asset, mode="one-way", patch='{"stop_loss": "%s"}' % stop,
             expected_version=None, trace=None, actor="t")
    s = stats(db)
    assert s["positions_at_risk"] == 2 and s["positions_at_risk_assets"] == ["BTCUSDT", "ETHUSDT"]
    assert D(s["largest_position_pct"]) == (D(110) * 100 / D(300)).quantize(D("0.0001"))
    row = db.execute("SELECT positions_at_risk, open_positions FROM pm.v_trade_statistics").fetchone()
    assert row == (2, 4)


def test_grafana_role_can_read_the_statistics_view(db):
    # the migrations create the role (when the cluster has none yet): no skip that could hide its loss
    assert db.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pm_grafana'").fetchone()
    fill(db, "BTCUSDT", "Buy", "1", "100")
    db.execute("SET ROLE pm_grafana")
    try:
        assert db.execute("SELECT open_positions FROM pm.v_trade_statistics").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM pm.v_holdings").fetchone() == (1,)
    finally:
        db.execute("RESET ROLE")


# ------------------------------------------------------------------ history

def history(db, asset="BTCUSDT", limit=100, offset=0, mode="one-way"):
    return call(db, "extras_position_history", asset=asset, mode=mode, limit=limit, offset=offset)


def test_history_is_the_audit_trail_newest_first_and_paginated(db):
    fill(db, "BTCUSDT", "Buy", "1", "100", trace="t-fill-1")
    fill(db, "BTCUSDT", "Buy", "1", "110", trace="t-fill-2")
    push_prices(db, {"BTCUSDT": "120"})
    call(db, "extras_update_position_meta", asset="BTCUSDT", mode="one-way", patch='{"notes": "n"}',
         expected_version=None, trace="t-meta", actor="key:ops")
    page = history(db, limit=3)
    assert page["count"] == 3 and page["has_more"] is True
    assert [h["version"] for h in page["history"]] == [4, 3, 2]
    newest = page["history"][0]
    assert (newest["source"], newest["action"], newest["actor"], newest["trace_id"]) == ("manual", "metadata", "key:ops", "t-meta")
    assert newest["detail"] == {"changes": {"notes": {"from": None, "to": "n"}}}
    assert newest["position"]["version"] == 4 and "event_type" not in newest["position"]
    assert (page["history"][1]["source"], page["history"][1]["action"]) == ("manual", "price")
    assert page["history"][2]["trace_id"] == "t-fill-2" and page["history"][2]["position"]["size"] == "2"
    rest = history(db, limit=3, offset=3)
    assert [h["version"] for h in rest["history"]] == [1] and rest["has_more"] is False
    assert history(db, offset=10)["history"] == []


def test_history_errors(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    assert sqlstate_of(db, "extras_position_history", asset="NOPEUSDT", mode="one-way", limit=1, offset=0)[0] == "P0002"
    for limit, offset, field in ((0, 0, "limit"), (1001, 0, "limit"), (1, -1, "offset")):
        state, message = sqlstate_of(db, "extras_position_history", asset="BTCUSDT", mode="one-way", limit=limit, offset=offset)
        assert state == "22023" and field in message
    assert sqlstate_of(db, "extras_position_history", asset="BTCUSDT", mode="x", limit=1, offset=0)[0] == "22023"


# ------------------------------------------------------------------ as of

def as_of(db, when, asset="BTCUSDT", mode="one-way"):
    return call(db, "extras_position_as_of", asset=asset, mode=mode, as_of=when)


def test_as_of_reconstructs_from_the_ledger_in_execution_order(db):
    fill(db, "BTCUSDT", "Buy", "1", "100", at="2025-01-01T00:00:00Z")
    fill(db, "BTCUSDT", "Buy", "1", "110", at="2025-01-01T02:00:00Z")
    fill(db, "BTCUSDT", "Sell", "2", "120", at="2025-01-01T04:00:00Z")
    fill(db, "BTCUSDT", "Sell", "1", "100", at="2025-01-01T01:00:00Z")     # late: between the first two
    state, message = sqlstate_of(db, "extras_position_as_of", asset="BTCUSDT", mode="one-way",
                                 as_of="2024-12-31T23:59:59Z")
    assert state == "P0002" and "did not exist" in message
    at0 = as_of(db, "2025-01-01T00:00:00Z")
    assert (at0["size"], at0["average_entry_price"], at0["side"], at0["is_open"]) == ("1", "100", "long", True)
    at1 = as_of(db, "2025-01-01T01:30:00+00:00")
    assert (at1["size"], at1["side"], at1["realized_pnl"], at1["is_open"]) == ("0", "flat", "0", False)
    assert at1["closed_at"] == "2025-01-01T01:00:00.000000Z"
    at3 = as_of(db, "2025-01-01T03:00:00Z")
    assert (at3["size"], at3["average_entry_price"], at3["opened_at"]) == ("1", "110", "2025-01-01T02:00:00.000000Z")
    at5 = as_of(db, "2025-06-01T00:00:00Z")
    assert (at5["size"], at5["side"], at5["realized_pnl"]) == ("-1", "short", "10")
    assert at5["last_execution"]["exec_time"] == "2025-01-01T04:00:00.000000Z"
    assert at5["reconstructed_from"] == "ledger" and at5["as_of"] == "2025-06-01T00:00:00.000000Z"


def test_as_of_hedge_and_errors(db):
    fill(db, "XRPUSDT", "Buy", "10", "1", mode="hedge", position_idx=1, at="2025-01-01T00:00:00Z")
    fill(db, "XRPUSDT", "Sell", "4", "1.2", mode="hedge", position_idx=2, at="2025-01-01T00:01:00Z")
    hedge = as_of(db, "2025-01-01T00:01:00Z", asset="xrpusdt", mode="hedge")
    assert (hedge["side"], hedge["long_size"], hedge["short_size"], hedge["size"]) == ("hedged", "10", "4", "6")
    assert sqlstate_of(db, "extras_position_as_of", asset="XRPUSDT", mode="one-way", as_of="2025-01-02")[0] == "P0002"
    assert sqlstate_of(db, "extras_position_as_of", asset="XRPUSDT", mode="hedge", as_of="infinity")[0] == "22023"


def test_as_of_of_a_position_older_than_its_ledger_counts_from_its_creation(db):
    insert_legacy(db, "INSERT INTO public.positions (asset, size, average_entry_price, realized_pnl, created_at) "
                      "VALUES ('ADAUSDT', 5, 0.4, 1, '2025-01-01 00:00:00')")
    fill(db, "ADAUSDT", "Buy", "5", "0.6", at="2025-02-01T00:00:00Z")
    assert sqlstate_of(db, "extras_position_as_of", asset="ADAUSDT", mode="one-way", as_of="2024-12-31T00:00:00Z")[0] == "P0002"
    before = as_of(db, "2025-01-15T00:00:00Z", asset="ADAUSDT")
    assert (before["size"], before["average_entry_price"], before["last_execution"]["kind"]) == ("5", "0.4", "opening")
    after = as_of(db, "2025-02-02T00:00:00Z", asset="ADAUSDT")
    assert (after["size"], after["average_entry_price"]) == ("10", "0.5")


# ------------------------------------------------------------------ property: holdings partition the PnL

import itertools  # noqa: E402

from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st  # noqa: E402

_ASSET_NUMBERS = itertools.count(1)

_FILLS = st.lists(st.tuples(st.sampled_from(["Buy", "Sell"]), st.integers(1, 4), st.integers(90, 110),
                            st.sampled_from(["0", "0.01", "-0.005"])), min_size=1, max_size=12)


@given(fills=_FILLS, shuffle_seed=st.randoms(use_true_random=False))
@hypothesis_settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_holdings_partition_the_realized_pnl_in_any_delivery_order(db, fills, shuffle_seed):
    """Whatever the fills and their delivery order: the holdings' realized PnL adds up to the
    position's, exactly one holding is open iff the position is, and holdings close where the
    size reaches zero or changes sign (counted from the fills in execution order)."""
    asset = f"PROP{next(_ASSET_NUMBERS)}USDT"   # a fresh position per example (the database is shared)
    timed = [(side, qty, price, fee, f"2025-01-01T00:{i:02d}:00Z") for i, (side, qty, price, fee) in enumerate(fills)]
    delivery = list(timed)
    shuffle_seed.shuffle(delivery)
    for side, qty, price, fee, at in delivery:
        fill(db, asset, side, str(qty), str(price), fee=fee, at=at)
    size, closes = 0, 0
    for side, qty, *_ in timed:
        new = size + (qty if side == "Buy" else -qty)
        closes += size != 0 and (new == 0 or (new > 0) != (size > 0))
        size = new
    realized, is_open = db.execute("SELECT realized_pnl, size <> 0 FROM public.positions WHERE asset = %s", (asset,)).fetchone()
    rows = db.execute("SELECT is_closed, realized_pnl FROM pm.v_holdings WHERE asset = %s ORDER BY holding_no", (asset,)).fetchall()
    assert sum(r[1] for r in rows) == realized
    assert sum(1 for r in rows if r[0]) == closes
    assert [r[0] for r in rows].count(False) == (1 if is_open else 0)
    assert all(r[0] for r in rows[:-1])                      # only the newest holding can be open
