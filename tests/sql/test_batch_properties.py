"""pm.apply_batch (the consumers' fast path) against the pure-Python reference of the fill accounting: any split
into batches, any delivery order and redeliveries give the reference position; every version bump
has exactly one outbox row. (tests/sql/test_batch.py covers the batch contract itself.)"""
from __future__ import annotations

import itertools
import random
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sql.helpers import (Fill, apply_order, bybit_c, bybit_message, counts, exec_a, fold, order_b, outbox_rows,
                               position, ref_fold)

_ids = itertools.count(1)


def batch(conn, events, kind="order"):
    return conn.execute("SELECT pm.apply_batch(%s, %s::jsonb)",
                        (kind, psycopg.types.json.Jsonb(events))).fetchone()[0]


def state(row):
    return (row["size"], row["average_entry_price"], row["realized_pnl"], row["opened_at"], row["closed_at"])


def assert_versions_match_outbox(db, row):
    """Every version bump has exactly one position_updated row carrying that version."""
    versions = [r["version"] for r in outbox_rows(db, row["id"])]
    assert versions == list(range(1, row["version"] + 1))


def test_batch_with_duplicates_inside_and_across_batches(db):
    e1, e2 = exec_a("d1", "Buy", 1, 100, "0", 0), bybit_c("d2", "Buy", 1, 110, "0", 1)
    assert [r["status"] for r in batch(db, [e1, e1, e2])] == ["applied", "duplicate", "applied"]
    before, before_counts = position(db), counts(db)
    assert [r["status"] for r in batch(db, [e2, e1])] == ["duplicate", "duplicate"]
    assert position(db) == before and counts(db) == before_counts


def test_batch_mixing_shapes_and_positions(db, connect):
    events = [order_b("mb1", "partially_filled", "Buy", "1", "100", "0.1", 0),
              exec_a("ma1", "Sell", 2, 50, "0", 0, asset="ETHUSDT"),
              bybit_message(bybit_c("mc1", "Buy", 1, 104, "0", 2), bybit_c("mc2", "Buy", 1, 60, "0", 3, symbol="ETHUSDT")),
              order_b("mb1", "filled", "Buy", "2", "101", "0.2", 1),
              order_b("mx", "cancelled", "Buy", "0", "0", "0", 4),
              exec_a("ma2", "Buy", 1, 40, "0", 1, asset="ETHUSDT")]
    results = batch(db, events)
    assert [r["status"] for r in results] == ["applied", "applied", "applied", "applied", "ignored", "applied"]
    # the same bodies one by one, on a database of their own
    other = connect(autocommit=True)
    other.execute("TRUNCATE public.positions CASCADE")
    for ev in events:
        apply_order(other, ev)
    for asset in ("BTCUSDT", "ETHUSDT"):
        assert state(position(db, asset)) == state(position(other, asset)), asset
        assert_versions_match_outbox(db, position(db, asset))


def test_hedge_leg_reduced_below_zero_rejects_the_batch(db):
    events = [exec_a("h1", "Buy", 1, 100, "0", 0, mode="hedge", position_idx=1),
              exec_a("h2", "Sell", 2, 100, "0", 1, mode="hedge", position_idx=1)]
    with pytest.raises(psycopg.Error) as err:
        batch(db, events)
    assert err.value.sqlstate == "22023"
    assert all(n == 0 for n in counts(db).values())


# ---------------------------------------------------------------------------------------------
# Property: any split into batches, any delivery order, duplicates -> the reference position
# ---------------------------------------------------------------------------------------------

fill = st.tuples(st.sampled_from(["Buy", "Sell"]), st.integers(1, 5).map(Decimal),
                 st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"), places=8),
                 st.decimals(min_value=Decimal("-0.5"), max_value=Decimal("0.5"), places=8),
                 st.sampled_from(["A", "C"]), st.booleans())


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.lists(fill, min_size=1, max_size=14), seed=st.integers(0, 2**32 - 1),
       dup_every=st.integers(2, 6))
def test_batches_in_any_order_give_the_reference_position(db, raw, seed, dup_every):
    n = next(_ids)
    assets = (f"BA{n}USDT", f"BB{n}USDT")
    fills = {a: [] for a in assets}
    events = []
    for i, (side, qty, price, fee, shape, second) in enumerate(raw):
        asset = assets[1] if second else assets[0]
        f = Fill(side, qty, price, fee, minute=i)
        fills[asset].append(f)
        key = f"{asset}-{i}"
        q, p, fe = (format(v, "f") for v in (qty, price, fee))
        events.append(bybit_c(key, side, q, p, fe, i, symbol=asset, seq=i) if shape == "C"
                      else exec_a(key, side, q, p, fe, i, asset=asset))
    rng = random.Random(seed)
    deliveries = events + events[::dup_every]          # some bodies arrive twice
    rng.shuffle(deliveries)
    statuses = []
    while deliveries:
        size = rng.randint(1, 6)
        chunk, deliveries = deliveries[:size], deliveries[size:]
        statuses += [r["status"] for r in batch(db, chunk)]
    assert statuses.count("applied") == len(events)
    for asset in assets:
        if not fills[asset]:
            assert position(db, asset) is None
            continue
        expected, row = ref_fold(fills[asset]), position(db, asset)
        assert state(row) == (expected.size, expected.avg, expected.realized, expected.opened_at, expected.closed_at)
        got = fold(db, row["id"])
        assert (got["size"], got["avg_price"], got["realized"]) == (row["size"], row["average_entry_price"],
                                                                    row["realized_pnl"])
        assert_versions_match_outbox(db, row)
