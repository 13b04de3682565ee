"""pm.apply_batch: many message bodies in one call (the consumers' fast path)."""
from __future__ import annotations

import json
import random
from decimal import Decimal as D

import psycopg
import pytest

T0 = "2026-03-01T00:00:00"


def execution(key: str, asset: str, side: str, qty: str, price: str, second: int, fee: str = "0.01") -> dict:
    return {"event_type": "order_executed", "execution_id": key, "order_id": f"o-{key}", "asset": asset,
            "side": side, "execution_quantity": qty, "execution_price": price, "execution_fees": fee,
            "executed_at": f"2026-03-01T00:{second // 60:02d}:{second % 60:02d}Z", "trace_id": f"tr-{key}"}


def batch(db, events, kind="order"):
    return db.execute("SELECT pm.apply_batch(%s, %s::jsonb)", (kind, json.dumps(events))).fetchone()[0]


def positions(db):
    return db.execute("SELECT asset, mode, size, average_entry_price, realized_pnl, opened_at, closed_at "
                      "FROM public.positions ORDER BY asset, mode").fetchall()


def random_executions(seed: int, n: int = 120) -> list[dict]:
    rnd = random.Random(seed)
    return [execution(f"k{seed}-{i}", rnd.choice(["AAAUSDT", "BBBUSDT", "CCCUSDT"]), rnd.choice(["Buy", "Sell"]),
                      str(rnd.randint(1, 40)), str(rnd.randint(90, 110)), i) for i in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_coalesced_batches_of_shuffled_redelivered_executions_match_the_ledger_fold(db, seed):
    evs = random_executions(seed)
    shuffled = evs[:]
    random.Random(seed).shuffle(shuffled)
    shuffled += shuffled[:15]                       # redeliveries inside and across batches
    for i in range(0, len(shuffled), 25):
        results = batch(db, shuffled[i:i + 25])
        assert len(results) == len(shuffled[i:i + 25])
        assert {r["status"] for r in results} <= {"applied", "duplicate"}
    assert db.execute("SELECT count(*) FROM pm.executions").fetchone()[0] == len(evs)
    mismatches = db.execute(
        "SELECT p.asset FROM public.positions p, LATERAL (SELECT pm.fold_ledger(p.id) AS f) x "
        "WHERE pm.state_of(p) IS DISTINCT FROM x.f").fetchall()
    assert mismatches == []


def test_batch_equals_single_calls_exactly(db):
    """The same executions under other symbols, one call each in time order, are the reference."""
    evs = random_executions(7, 90)
    single = [{**e, "asset": e["asset"].replace("USDT", "PERP"), "execution_id": "s-" + e["execution_id"]} for e in evs]
    for ev in single:
        db.execute("SELECT pm.apply_order_event(%s::jsonb)", (json.dumps(ev),))
    shuffled = evs[:]
    random.Random(9).shuffle(shuffled)
    for i in range(0, len(shuffled), 20):
        batch(db, shuffled[i:i + 20])
    rows = {(a, m): (s, p, r, o, c) for a, m, s, p, r, o, c in positions(db)}
    for asset in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        assert rows[(asset, "one-way")] == rows[(asset.replace("USDT", "PERP"), "one-way")], asset


def test_each_position_is_written_once_per_batch(db):
    evs = [execution("a1", "AAAUSDT", "Buy", "1", "100", 1), execution("a2", "AAAUSDT", "Buy", "1", "102", 2),
           execution("b1", "BBBUSDT", "Sell", "2", "50", 3), execution("a3", "AAAUSDT", "Sell", "1", "110", 4)]
    results = batch(db, evs)
    assert [r["status"] for r in results] == ["applied"] * 4
    version, size, avg, realized = db.execute(
        "SELECT version, size, average_entry_price, realized_pnl FROM positions WHERE asset = 'AAAUSDT'").fetchone()
    assert (version, size, avg) == (1, 1, 101)
    assert realized == D("9") - D("0.03")
    rows = db.execute("SELECT o.detail, pm.outbox_body(o) FROM pm.outbox o WHERE o.asset = 'AAAUSDT'").fetchall()
    assert len(rows) == 1
    assert rows[0][0]["executions"] == ["a1", "a2", "a3"]
    assert rows[0][1]["version"] == 1 and rows[0][1]["size"] == "1"
    assert [r["position"]["version"] for r in results] == [1, 1, 1, 1]
    assert {r["position"]["asset"] for r in results} == {"AAAUSDT", "BBBUSDT"}


def test_an_invalid_body_raises_and_writes_nothing(db):
    evs = [execution("x1", "AAAUSDT", "Buy", "1", "100", 1), execution("x2", "AAAUSDT", "Buy", "-1", "100", 2)]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        batch(db, evs)
    assert "execution_quantity" in str(err.value)
    assert db.execute("SELECT count(*) FROM pm.executions").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM pm.outbox").fetchone()[0] == 0


def test_mixed_shapes_in_one_batch(db):
    order_b = {"event_id": "ev-b", "event_type": "partially_filled", "timestamp": "2026-03-01T00:00:10Z", "trace_id": "t",
               "order": {"id": "u1", "order_id": "ob1", "asset": "CCCUSDT", "side": "SELL", "quantity": "4",
                         "filled_quantity": "2", "average_price": "10", "fees": "0.01", "status": "partially_filled",
                         "executed_at": "2026-03-01T00:00:10Z", "is_dry_run": False}}
    bybit = {"topic": "execution", "data": [
        {"execId": "c1", "symbol": "CCCUSDT", "side": "Sell", "execQty": "1", "execPrice": "11", "execFee": "0",
         "execTime": "1772323220000", "execType": "Trade", "seq": 1},
        {"execId": "c2", "symbol": "CCCUSDT", "side": "Sell", "execQty": "1", "execPrice": "11", "execFee": "0.5",
         "execTime": "1772323230000", "execType": "Funding", "seq": 2}]}
    cancelled = {**order_b, "event_type": "cancelled"}          # the same cumulative figures: adds nothing
    results = batch(db, [execution("m1", "CCCUSDT", "Sell", "1", "12", 1), order_b, bybit, cancelled])
    assert [r["status"] for r in results] == ["applied", "applied", "applied", "duplicate"]
    size, realized = db.execute("SELECT size, realized_pnl FROM positions WHERE asset = 'CCCUSDT'").fetchone()
    assert size == -4
    assert realized == D("-0.01") - D("0.01") - D("0.5")


def ledger_keys(db, asset):
    return [k for (k,) in db.execute(
        "SELECT l.exec_key FROM pm.executions l JOIN public.positions p ON p.id = l.position_id "
        "WHERE p.asset = %s ORDER BY l.exec_time, l.seq, l.arrival", (asset,))]


def test_a_key_twice_in_a_batch_at_different_times_is_applied_once(db):
    """The rows of a position that come after its newest are inserted together at the end of the
    position: a key repeated with another time must not reach that insert twice."""
    evs = [execution("t0", "DDDUSDT", "Buy", "1", "100", 1), execution("t1", "DDDUSDT", "Buy", "2", "100", 2),
           execution("t2", "DDDUSDT", "Buy", "3", "100", 3), {**execution("t1", "DDDUSDT", "Buy", "2", "100", 9)}]
    assert [r["status"] for r in batch(db, evs)] == ["applied", "applied", "applied", "duplicate"]
    assert ledger_keys(db, "DDDUSDT") == ["t0", "t1", "t2"]
    size, version = db.execute("SELECT size, version FROM positions WHERE asset = 'DDDUSDT'").fetchone()
    assert (size, version) == (6, 1)


def test_a_key_applied_to_another_position_is_a_duplicate_in_a_later_batch(db):
    db.execute("SELECT pm.apply_order_event(%s::jsonb)", (json.dumps(execution("shared", "EEEUSDT", "Buy", "1", "100", 1)),))
    evs = [execution("f0", "FFFUSDT", "Buy", "1", "100", 1), execution("f1", "FFFUSDT", "Buy", "1", "100", 2),
           execution("shared", "FFFUSDT", "Buy", "5", "100", 3), execution("f2", "FFFUSDT", "Sell", "1", "110", 4)]
    assert [r["status"] for r in batch(db, evs)] == ["applied", "applied", "duplicate", "applied"]
    assert ledger_keys(db, "FFFUSDT") == ["f0", "f1", "f2"]
    assert ledger_keys(db, "EEEUSDT") == ["shared"]
    mismatches = db.execute("SELECT p.asset FROM public.positions p "
                            "WHERE pm.state_of(p) IS DISTINCT FROM pm.fold_ledger(p.id)").fetchall()
    assert mismatches == [] and positions(db)[1][2] == 1
