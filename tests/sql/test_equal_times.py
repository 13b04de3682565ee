"""Executions that share their execution time (and exchange sequence): the ledger keeps them in the
order they were applied (arrival), after any rows of that time already there, and folds them so.

What is promised for them (docs/accounting.md, "The order of executions, and equal times") is
checked here with hypothesis: the position is the reference fold in (time, sequence, arrival) order
whatever the delivery order of distinct times; whatever the arrival order of tied executions, the
size and the total PnL (realized - size x average) are the same (up to rounding to 8 decimals), and
a sweep of one side (every tied execution adds to the position) also gives the same realized PnL
and holding times with averages within the rounding. A tied execution re-folds no ledger row.
The expected positions come from the pure-Python reference (bench/reference.py)."""
from __future__ import annotations

import itertools
import random
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sql.helpers import Fill, apply_order, at_naive, bybit_c, exec_a, fold, hedge_a, position, ref_fold

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_assets = itertools.count(1)
EIGHT = Decimal("0.00000001")

quantities = st.one_of(st.integers(min_value=1, max_value=5).map(Decimal),
                       st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000"), places=8))
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=8)
fees = st.decimals(min_value=Decimal("-1"), max_value=Decimal("1"), places=8)
# (side, qty, price, fee, minute from a small set so that many share one, shape, Bybit seq from a small set)
tied_fill = st.tuples(st.sampled_from(["Buy", "Sell"]), quantities, prices, fees, st.integers(0, 2),
                      st.sampled_from(["A", "C", "C", "F"]), st.integers(0, 1))


def new_asset() -> str:
    return f"T{next(_assets)}USDT"


def s(d: Decimal) -> str:
    return format(d, "f")


def event(asset: str, key: str, side: str, qty, price, fee, minute, shape: str = "A", seq: int = 0) -> dict:
    if shape == "F":
        return bybit_c(key, side, s(qty), s(price), s(fee), minute, symbol=asset, seq=seq, exec_type="Funding")
    if shape == "C":
        return bybit_c(key, side, s(qty), s(price), s(fee), minute, symbol=asset, seq=seq)
    return exec_a(key, side, s(qty), s(price), s(fee), minute, asset=asset)


def ledger_seq(shape: str, seq: int) -> int:
    """The exchange sequence the ledger keeps: Bybit's seq for shape C, -1 for shape A (none)."""
    return -1 if shape == "A" else seq


def assert_position(db, asset: str, expected, mode: str = "one-way") -> dict:
    row = position(db, asset, mode)
    got = fold(db, row["id"])
    # the stored position is the fold of its ledger from scratch ...
    assert (got["size"], got["avg_price"], got["realized"], got["long_size"], got["long_avg"], got["short_size"],
            got["short_avg"]) == (row["size"], row["average_entry_price"], row["realized_pnl"], row["long_size"],
                                  row["long_avg_price"], row["short_size"], row["short_avg_price"])
    # ... and the reference
    assert row["size"] == expected.size
    assert row["realized_pnl"] == expected.realized
    assert (row["opened_at"], row["closed_at"]) == (expected.opened_at, expected.closed_at)
    if mode == "hedge":
        assert (row["long_size"], row["long_avg_price"], row["short_size"], row["short_avg_price"]) == (
            expected.long_size, expected.long_avg, expected.short_size, expected.short_avg)
    else:
        assert row["average_entry_price"] == expected.avg
    return row


@PROPERTY_SETTINGS
@given(raw=st.lists(tied_fill, min_size=2, max_size=14), seed=st.integers(0, 2**32 - 1))
def test_the_ledger_order_is_time_then_sequence_then_arrival(db, raw, seed):
    """Any delivery order of executions drawn from three times and two sequences (so most share
    both with others): the position is the reference fold of the executions sorted by (time,
    sequence) and, among equal ones, in the order they arrived. Late ones re-fold what follows."""
    asset = new_asset()
    items = [(f"{asset}-{i}", *r) for i, r in enumerate(raw)]
    random.Random(seed).shuffle(items)          # the delivery (= arrival) order
    for key, side, qty, price, fee, minute, shape, seq in items:
        assert apply_order(db, event(asset, key, side, qty, price, fee, minute, shape, seq))["status"] == "applied"
    ordered = sorted(items, key=lambda it: (it[5], ledger_seq(it[6], it[7])))   # stable: arrival among equals
    expected = ref_fold([Fill(side, qty, price, fee, minute, funding=shape == "F")
                         for _, side, qty, price, fee, minute, shape, _ in ordered])
    row = assert_position(db, asset, expected)
    assert row["version"] == len(items)


def pnl_bound(fills: list[Fill], start: Decimal) -> Decimal:
    """How far the total PnL (realized - size x average) of one fold can be from the exact one:
    each step rounds the average (|size| x 0.5e-8) and realized PnL (0.5e-8) to 8 decimals."""
    return len(fills) * (abs(start) + sum(f.qty for f in fills) + 1) * EIGHT


@PROPERTY_SETTINGS
@given(before=st.lists(tied_fill, max_size=5), tie=st.lists(tied_fill, min_size=2, max_size=10),
       seed=st.integers(0, 2**32 - 1))
def test_tied_executions_in_any_arrival_order_give_the_same_size_and_total_pnl(db, before, tie, seed):
    """Two positions get the same executions: some at distinct earlier times, then a group that
    shares one time, in two arrival orders. Size equal exactly; realized - size x average (the
    total PnL at any price, minus what the executions cost) equal up to the rounding."""
    history = [Fill(side, qty, price, fee, i) for i, (side, qty, price, fee, *_rest) in enumerate(before)]
    group = [Fill(side, qty, price, fee, 10) for side, qty, price, fee, *_rest in tie]
    orders = [list(group), random.Random(seed).sample(group, len(group))]
    rows = []
    for arrival in orders:
        asset = new_asset()
        for i, f in enumerate(history + arrival):
            assert apply_order(db, event(asset, f"{asset}-{i}", f.side, f.qty, f.price, f.fee, f.minute))["status"] == "applied"
        rows.append(assert_position(db, asset, ref_fold(history + arrival)))
    a, b = rows
    assert a["size"] == b["size"]
    start = ref_fold(history).size

    def total(r):
        return r["realized_pnl"] - r["size"] * (r["average_entry_price"] or 0)

    assert abs(total(a) - total(b)) <= 2 * pnl_bound(group, start) + 2 * pnl_bound(history, Decimal(0))


@PROPERTY_SETTINGS
@given(start=st.sampled_from(["flat", "long", "short"]), side=st.sampled_from(["Buy", "Sell"]),
       sweep=st.lists(st.tuples(quantities, prices, fees), min_size=2, max_size=10), seed=st.integers(0, 2**32 - 1))
def test_a_one_sided_sweep_at_one_time_gives_the_same_realized_pnl_in_any_arrival_order(db, start, side, sweep, seed):
    """A taker order sweeping several levels: executions of one side at one time that all add to
    the position (flat before, or already on that side). Realized PnL, size, opened_at, closed_at
    are identical in any arrival order; the average differs at most by 1e-8 per execution."""
    if start != "flat":
        side = "Buy" if start == "long" else "Sell"
    group = [Fill(side, qty, price, fee, 5) for qty, price, fee in sweep]
    history = [] if start == "flat" else [Fill(side, Decimal(3), Decimal(100), Decimal("0.1"), 1)]
    rows = []
    for arrival in (group, random.Random(seed).sample(group, len(group))):
        asset = new_asset()
        for i, f in enumerate(history + arrival):
            assert apply_order(db, event(asset, f"{asset}-{i}", f.side, f.qty, f.price, f.fee, f.minute))["status"] == "applied"
        rows.append(assert_position(db, asset, ref_fold(history + arrival)))
    a, b = rows
    assert (a["size"], a["realized_pnl"], a["opened_at"], a["closed_at"]) == (b["size"], b["realized_pnl"],
                                                                              b["opened_at"], b["closed_at"])
    assert a["opened_at"] == at_naive(5 if start == "flat" else 1)
    assert abs(a["average_entry_price"] - b["average_entry_price"]) <= len(group) * EIGHT


hedge_op = st.tuples(st.sampled_from([1, 2]), st.sampled_from(["add", "reduce"]), quantities, prices, fees)


@PROPERTY_SETTINGS
@given(ops=st.lists(hedge_op, min_size=1, max_size=12))
def test_hedge_executions_sharing_a_time_apply_in_arrival_order(db, ops):
    """Hedge fills at one time, delivered in an order that never takes a leg below zero: every one
    applies (a reduce arriving after the add it needs is valid, whatever the keys), and the legs
    are the reference fold in arrival order. Keys are chosen to sort against the arrival order."""
    asset, legs, fills = new_asset(), {1: Decimal(0), 2: Decimal(0)}, []
    for leg, action, qty, price, fee in ops:
        if action == "reduce" and legs[leg] > 0:
            qty = min(qty, legs[leg])
            side, legs[leg] = ("Sell" if leg == 1 else "Buy"), legs[leg] - qty
        else:
            side, legs[leg] = ("Buy" if leg == 1 else "Sell"), legs[leg] + qty
        fills.append(Fill(side, qty, price, fee, 3, leg=leg))
    for i, f in enumerate(fills):
        key = f"{asset}-{len(fills) - i:03d}"     # descending keys: key order is the reverse of arrival
        result = apply_order(db, hedge_a(key, f.leg, f.side, s(f.qty), s(f.price), s(f.fee), f.minute, asset=asset))
        assert result["status"] == "applied"
    row = assert_position(db, asset, ref_fold(fills), mode="hedge")
    assert row["size"] == row["long_size"] - row["short_size"]


def executions_updated(conn) -> int:
    """Ledger rows updated so far by this transaction (a late row re-folds by updating them)."""
    return conn.execute("SELECT n_tup_upd FROM pg_stat_xact_user_tables "
                        "WHERE schemaname = 'pm' AND relname = 'executions'").fetchone()[0]


def test_a_tied_execution_re_folds_no_ledger_row_and_a_late_one_re_folds_the_rows_after_it(connect):
    """Forty executions at one time with random keys apply without touching another ledger row;
    one at an earlier time then re-folds exactly the forty after it."""
    conn = connect()
    rng = random.Random(5)
    keys = [f"tie-{rng.getrandbits(64):016x}" for _ in range(40)]
    for i, key in enumerate(keys):
        apply_order(conn, exec_a(key, rng.choice(["Buy", "Sell"]), "1", str(100 + i), "0.01", 7, asset="TIEUSDT"))
    assert executions_updated(conn) == 0
    apply_order(conn, exec_a("tie-early", "Buy", "1", "90", "0", 6, asset="TIEUSDT"))
    assert executions_updated(conn) == 40
    conn.commit()


def test_rows_from_before_arrival_was_recorded_keep_their_key_order_and_new_ties_follow_them(db):
    """An upgraded database holds ledger rows with arrival 0: they fold among themselves by key
    (their order before), and a later execution of their time comes after all of them."""
    asset = new_asset()
    apply_order(db, exec_a(f"{asset}-b", "Buy", "1", "100", "0", 4, asset=asset))
    apply_order(db, exec_a(f"{asset}-c", "Sell", "1", "120", "0", 4, asset=asset))
    row = position(db, asset)
    db.execute("UPDATE pm.executions SET arrival = 0 WHERE position_id = %s", (row["id"],))   # as 0090 leaves them
    apply_order(db, exec_a(f"{asset}-a", "Buy", "2", "110", "0", 4, asset=asset))
    fills = [Fill("Buy", Decimal(1), Decimal(100), Decimal(0), 4), Fill("Sell", Decimal(1), Decimal(120), Decimal(0), 4),
             Fill("Buy", Decimal(2), Decimal(110), Decimal(0), 4)]
    assert_position(db, asset, ref_fold(fills))          # b, c by key, then a (arrival), though "a" sorts first
    assert position(db, asset)["realized_pnl"] == 20
