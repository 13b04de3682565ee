"""Property tests of the fill accounting (its rules and the guarantees of every fill shape) with hypothesis.

Each example works on a position of its own (a fresh asset name), in the one database of the test.
The expected result comes from the pure-Python reference in tests/sql/helpers.py."""
from __future__ import annotations

import itertools
import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sql.helpers import (Fill, apply_order, at_naive, bybit_c, exec_a, fold, hedge_a, position, ref_fold)

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_assets = itertools.count(1)

quantities = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000"), places=8)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=8)
fees = st.decimals(min_value=Decimal("-1"), max_value=Decimal("1"), places=8)
# Small integer quantities make closes and flips (size exactly 0, sign changes) frequent.
small_quantities = st.integers(min_value=1, max_value=5).map(Decimal)

one_way_fill = st.builds(lambda side, qty, price, fee, shape: (side, qty, price, fee, shape),
                         st.sampled_from(["Buy", "Sell"]), st.one_of(small_quantities, quantities), prices, fees,
                         st.sampled_from(["A", "C", "A", "C", "F"]))   # F: a Bybit Funding record
one_way_sequences = st.lists(one_way_fill, min_size=1, max_size=12)


def new_asset() -> str:
    return f"P{next(_assets)}USDT"


def s(d: Decimal) -> str:
    return format(d, "f")


def to_fills(raw) -> list[Fill]:
    """Distinct, increasing execution times: minute i for the i-th fill."""
    return [Fill(side, qty, price, fee, minute=i, funding=shape == "F")
            for i, (side, qty, price, fee, shape) in enumerate(raw)]


def event_for(asset: str, i: int, f: Fill, shape: str) -> dict:
    key = f"{asset}-{i}"
    if shape == "F":
        return bybit_c(key, f.side, s(f.qty), s(f.price), s(f.fee), f.minute, symbol=asset, seq=i, exec_type="Funding")
    if shape == "C":
        return bybit_c(key, f.side, s(f.qty), s(f.price), s(f.fee), f.minute, symbol=asset, seq=i)
    return exec_a(key, f.side, s(f.qty), s(f.price), s(f.fee), f.minute, asset=asset)


def assert_equals_reference(db, asset, expected, mode="one-way"):
    row = position(db, asset, mode)
    assert row is not None
    got = fold(db, row["id"])
    # (a) incremental == fold of the ledger
    assert (got["size"], got["avg_price"], got["realized"]) == (
        row["size"], row["average_entry_price"], row["realized_pnl"])
    if mode == "hedge":
        assert (row["long_size"], row["long_avg_price"], row["short_size"], row["short_avg_price"]) == (
            expected.long_size, expected.long_avg, expected.short_size, expected.short_avg)
    else:
        assert row["average_entry_price"] == expected.avg
    # (a) == reference
    assert row["size"] == expected.size
    assert row["realized_pnl"] == expected.realized
    assert row["opened_at"] == expected.opened_at
    assert row["closed_at"] == expected.closed_at
    return row


@PROPERTY_SETTINGS
@given(raw=one_way_sequences)
def test_incremental_equals_fold_and_reference(db, raw):
    asset, fills = new_asset(), to_fills(raw)
    for i, (f, r) in enumerate(zip(fills, raw)):
        assert apply_order(db, event_for(asset, i, f, r[4]))["status"] == "applied"
    row = assert_equals_reference(db, asset, ref_fold(fills))
    assert row["version"] == len(fills)


@PROPERTY_SETTINGS
@given(raw=one_way_sequences, interleaved=st.booleans())
def test_every_execution_twice_gives_the_same_position(db, raw, interleaved):
    asset, fills = new_asset(), to_fills(raw)
    events = [event_for(asset, i, f, r[4]) for i, (f, r) in enumerate(zip(fills, raw))]
    order = [e for e in events for _ in (0, 1)] if interleaved else events + events
    statuses = [apply_order(db, e)["status"] for e in order]
    assert statuses.count("applied") == len(events)
    assert statuses.count("duplicate") == len(events)
    row = assert_equals_reference(db, asset, ref_fold(fills))
    assert row["version"] == len(fills)


@PROPERTY_SETTINGS
@given(raw=st.lists(one_way_fill, min_size=2, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_shuffled_delivery_gives_the_in_order_position(db, raw, seed):
    asset, fills = new_asset(), to_fills(raw)
    events = [event_for(asset, i, f, r[4]) for i, (f, r) in enumerate(zip(fills, raw))]
    random.Random(seed).shuffle(events)
    for e in events:
        assert apply_order(db, e)["status"] == "applied"
    row = assert_equals_reference(db, asset, ref_fold(fills))
    assert row["version"] == len(fills)


# ---------------------------------------------------------------------------------------------
# Hedge mode: sequences that never take a leg below zero, delivered in time order
# ---------------------------------------------------------------------------------------------

hedge_op = st.tuples(st.sampled_from([1, 2]), st.sampled_from(["add", "reduce"]),
                     st.one_of(small_quantities, quantities), prices, fees)


def hedge_fills(ops) -> list[Fill]:
    legs = {1: Decimal(0), 2: Decimal(0)}
    fills = []
    for i, (leg, action, qty, price, fee) in enumerate(ops):
        if action == "reduce" and legs[leg] > 0:
            qty = min(qty, legs[leg])
            side = "Sell" if leg == 1 else "Buy"
            legs[leg] -= qty
        else:
            side = "Buy" if leg == 1 else "Sell"
            legs[leg] += qty
        fills.append(Fill(side, qty, price, fee, minute=i, leg=leg))
    return fills


@PROPERTY_SETTINGS
@given(ops=st.lists(hedge_op, min_size=1, max_size=12), twice=st.booleans())
def test_hedge_incremental_equals_fold_and_reference(db, ops, twice):
    asset, fills = new_asset(), hedge_fills(ops)
    events = [hedge_a(f"{asset}-{i}", f.leg, f.side, s(f.qty), s(f.price), s(f.fee), f.minute, asset=asset)
              for i, f in enumerate(fills)]
    for e in events:
        assert apply_order(db, e)["status"] == "applied"
        if twice:
            assert apply_order(db, e)["status"] == "duplicate"
    expected = ref_fold(fills)
    row = assert_equals_reference(db, asset, expected, mode="hedge")
    assert row["size"] == row["long_size"] - row["short_size"]
    assert row["version"] == len(fills)
    got = fold(db, row["id"])
    assert (got["long_size"], got["long_avg"], got["short_size"], got["short_avg"]) == (
        row["long_size"], row["long_avg_price"], row["short_size"], row["short_avg_price"])


def test_reference_matches_the_worked_examples():
    """The reference itself is checked against the worked examples before it judges the SQL."""
    f = [Fill("Buy", Decimal(10), Decimal(100), Decimal("0.1"), 0), Fill("Buy", Decimal(10), Decimal(110), Decimal("0.11"), 1),
         Fill("Sell", Decimal(5), Decimal(120), Decimal("0.06"), 2)]
    r = ref_fold(f)
    assert (r.size, r.avg, r.realized) == (15, 105, Decimal("74.73"))
    r = ref_fold([Fill("Buy", Decimal(100), Decimal(1), Decimal(0), 0), Fill("Sell", Decimal(50), Decimal(2), Decimal(0), 1),
                  Fill("Sell", Decimal(100), Decimal(3), Decimal(0), 2)])
    assert (r.size, r.avg, r.realized, r.opened_at) == (-50, 3, 150, at_naive(2))


@PROPERTY_SETTINGS
@given(ops=st.lists(hedge_op, min_size=2, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_hedge_late_deliveries_that_keep_every_leg_valid_give_the_reference(db, ops, seed):
    """Adds first and reduces after them, each group shuffled: at every moment the time-ordered ledger
    holds all adds and only some reduces, so no leg ever goes below zero; the result must not depend
    on the delivery order."""
    asset, fills = new_asset(), hedge_fills(ops)
    events = [(f, hedge_a(f"{asset}-{i}", f.leg, f.side, s(f.qty), s(f.price), s(f.fee), f.minute, asset=asset))
              for i, f in enumerate(fills)]
    adds = [e for f, e in events if (f.leg, f.side) in ((1, "Buy"), (2, "Sell"))]
    reduces = [e for f, e in events if (f.leg, f.side) not in ((1, "Buy"), (2, "Sell"))]
    rng = random.Random(seed)
    rng.shuffle(adds)
    rng.shuffle(reduces)
    for e in adds + reduces:
        assert apply_order(db, e)["status"] == "applied"
    assert_equals_reference(db, asset, ref_fold(fills), mode="hedge")
