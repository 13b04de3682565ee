"""Concurrent writers: several sessions applying fills to one position never lose an
update; a second writer waits for the first one's commit (pgmq-style step-by-step interleaving)."""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.helpers import (Fill, apply_order, bybit_c, bybit_message, counts, exec_a, fold, position,
                               ref_fold)

THREADS = 4
FILLS_PER_THREAD = 8
WAIT_LIMIT = 10.0        # seconds: a deadline for polling, never an assertion on speed



def with_retry(conn: psycopg.Connection, work, attempts: int = 10):
    """Run work(conn) and commit; deadlocks and serialization failures are transient: retry."""
    for attempt in range(attempts):
        try:
            result = work(conn)
            conn.commit()
            return result
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            conn.rollback()
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("gave up after retries")


def run_threads(conns, jobs_per_conn):
    """Each connection runs its own list of jobs in its own thread; errors are re-raised here."""
    start = threading.Barrier(len(conns))

    def worker(conn, jobs):
        start.wait()
        return [with_retry(conn, job) for job in jobs]

    with ThreadPoolExecutor(len(conns)) as pool:
        futures = [pool.submit(worker, c, jobs) for c, jobs in zip(conns, jobs_per_conn)]
        return [f.result() for f in futures]


def wait_until_blocked(db, pid: int) -> None:
    """Poll until backend `pid` waits on a heavyweight lock (proves it blocks), with a deadline."""
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited on a lock")


# ---------------------------------------------------------------------------------------------
# Many threads, one position
# ---------------------------------------------------------------------------------------------

def test_concurrent_fills_to_one_position_lose_nothing(db, connect):
    rng = random.Random(7)
    n = THREADS * FILLS_PER_THREAD
    minutes = list(range(1, n + 1))
    rng.shuffle(minutes)                    # arrival order differs from time order
    fills = [Fill(rng.choice(["Buy", "Sell"]), Decimal(rng.randint(1, 5)), Decimal(rng.randint(90, 110)),
                  Decimal("0.01"), minute=m) for m in minutes]
    first = Fill("Buy", Decimal(3), Decimal(100), Decimal(0), minute=0)
    apply_order(db, exec_a("c-first", "Buy", 3, 100, "0", 0))

    def job(i, f):
        return lambda conn: apply_order(conn, exec_a(f"c-{i}", f.side, f.qty, f.price, f.fee, f.minute))["status"]

    jobs = [[job(i, f) for i, f in enumerate(fills) if i % THREADS == t] for t in range(THREADS)]
    results = run_threads([connect() for _ in range(THREADS)], jobs)
    assert [s for r in results for s in r] == ["applied"] * n

    row = position(db)
    expected = ref_fold([first] + fills)
    assert row["size"] == expected.size == 3 + sum(f.qty if f.side == "Buy" else -f.qty for f in fills)
    assert (row["average_entry_price"], row["realized_pnl"]) == (expected.avg, expected.realized)
    st = fold(db, row["id"])
    assert (st["size"], st["avg_price"], st["realized"]) == (row["size"], row["average_entry_price"], row["realized_pnl"])
    assert row["version"] == n + 1
    assert counts(db)["pm.executions"] == n + 1
    assert counts(db)["pm.outbox"] == n + 1


def test_same_execution_delivered_concurrently_applies_once(db, connect):
    # every session races to create the position and insert the same ledger key
    conns = [connect() for _ in range(THREADS)]
    ev = exec_a("same", "Buy", "1.5", 100, "0.01", 0)
    results = run_threads(conns, [[lambda c: apply_order(c, ev)["status"]] for _ in conns])
    statuses = sorted(s for r in results for s in r)
    assert statuses == ["applied"] + ["duplicate"] * (THREADS - 1)
    row = position(db)
    assert row["size"] == Decimal("1.5") and row["version"] == 1
    assert counts(db)["pm.executions"] == 1 and counts(db)["pm.outbox"] == 1


def test_concurrent_first_fills_of_distinct_positions(db, connect):
    conns = [connect() for _ in range(THREADS)]
    jobs = [[lambda c, t=t, k=k: apply_order(c, exec_a(f"d-{t}-{k}", "Buy", 1, 100, "0", k, asset=f"D{t}USDT"))["status"]
             for k in range(FILLS_PER_THREAD)] for t in range(THREADS)]
    run_threads(conns, jobs)
    for t in range(THREADS):
        row = position(db, f"D{t}USDT")
        assert (row["size"], row["version"]) == (FILLS_PER_THREAD, FILLS_PER_THREAD)


# ---------------------------------------------------------------------------------------------
# Two positions in crossed order
# ---------------------------------------------------------------------------------------------

def test_crossed_order_deadlock_is_transient_and_nothing_is_lost(db, connect):
    """s1 writes A then B, s2 writes B then A, each in one transaction: PostgreSQL breaks the deadlock
    (40P01, a retryable error); after s2's retry both positions hold every fill."""
    apply_order(db, exec_a("a0", "Buy", 1, 100, "0", 0, asset="AAAUSDT"))
    apply_order(db, exec_a("b0", "Buy", 1, 100, "0", 0, asset="BBBUSDT"))
    s1, s2 = connect(), connect()
    s1.execute("SET deadlock_timeout = '10s'")       # s2 detects the deadlock and is the victim
    s2.execute("SET deadlock_timeout = '50ms'")
    apply_order(s1, bybit_c("a1", "Buy", 1, 110, "0", 1, symbol="AAAUSDT"))
    apply_order(s2, bybit_c("b2", "Buy", 1, 120, "0", 2, symbol="BBBUSDT"))
    errors: list[BaseException] = []

    def s1_second_half():
        try:
            apply_order(s1, bybit_c("b1", "Buy", 1, 110, "0", 1.5, symbol="BBBUSDT"))
            s1.commit()
        except BaseException as exc:             # re-raised in the main thread
            errors.append(exc)

    t = threading.Thread(target=s1_second_half)
    t.start()
    wait_until_blocked(db, s1.info.backend_pid)      # s1 waits for s2's lock on BBB
    with pytest.raises(psycopg.errors.DeadlockDetected):
        apply_order(s2, bybit_c("a2", "Buy", 1, 120, "0", 2, symbol="AAAUSDT"))
    s2.rollback()
    t.join(WAIT_LIMIT)
    assert not t.is_alive() and not errors, errors
    # the victim retries its whole message (crossed order: BBB first, then AAA)
    res = with_retry(s2, lambda c: apply_order(c, bybit_message(
        bybit_c("b2", "Buy", 1, 120, "0", 2, symbol="BBBUSDT"), bybit_c("a2", "Buy", 1, 120, "0", 2, symbol="AAAUSDT"))))
    assert [r["status"] for r in res["results"]] == ["applied", "applied"]
    for asset in ("AAAUSDT", "BBBUSDT"):
        row = position(db, asset)
        assert (row["size"], row["average_entry_price"], row["version"]) == (3, 110, 3)
        st = fold(db, row["id"])
        assert (st["size"], st["avg_price"]) == (row["size"], row["average_entry_price"])


def test_crossed_order_many_threads_lose_nothing(db, connect):
    """Threads send two-record messages (AAA+BBB) in opposite orders, committing each, retrying deadlocks."""
    apply_order(db, exec_a("x0", "Buy", 1, 100, "0", 0, asset="AAAUSDT"))
    apply_order(db, exec_a("y0", "Buy", 1, 100, "0", 0, asset="BBBUSDT"))
    conns = [connect() for _ in range(THREADS)]
    for c in conns:
        c.execute("SET deadlock_timeout = '50ms'")
        c.commit()

    def job(t, k):
        minute = 1 + k * THREADS + t
        recs = [bybit_c(f"x-{t}-{k}", "Buy", 1, 100 + t, "0", minute, symbol="AAAUSDT"),
                bybit_c(f"y-{t}-{k}", "Buy", 1, 100 + t, "0", minute, symbol="BBBUSDT")]
        if t % 2:
            recs.reverse()
        return lambda c: apply_order(c, bybit_message(*recs))["status"]

    run_threads(conns, [[job(t, k) for k in range(FILLS_PER_THREAD)] for t in range(THREADS)])
    n = THREADS * FILLS_PER_THREAD
    for asset in ("AAAUSDT", "BBBUSDT"):
        row = position(db, asset)
        assert (row["size"], row["version"]) == (n + 1, n + 1)
        assert fold(db, row["id"])["size"] == row["size"]


# ---------------------------------------------------------------------------------------------
# pgmq-style step-by-step interleaving of two sessions
# ---------------------------------------------------------------------------------------------

def start_apply(conn, event, commit=True):
    """Apply (and commit) in a thread; returns (thread, outcome dict)."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = apply_order(conn, event)
            if commit:
                conn.commit()
        except BaseException as exc:
            outcome["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, outcome


@pytest.mark.parametrize("first_commits", [True, False])
def test_second_writer_waits_for_the_first(db, connect, first_commits):
    apply_order(db, exec_a("f0", "Buy", 1, 100, "0", 0))
    s1, s2 = connect(), connect()
    apply_order(s1, exec_a("f1", "Buy", 1, 110, "0", 1))
    # uncommitted work is invisible to others
    assert (position(db)["size"], position(db)["version"]) == (1, 1)
    t, outcome = start_apply(s2, exec_a("f2", "Buy", 2, 130, "0", 2))
    wait_until_blocked(db, s2.info.backend_pid)
    assert t.is_alive() and not outcome
    s1.commit() if first_commits else s1.rollback()
    t.join(WAIT_LIMIT)
    assert not t.is_alive() and "error" not in outcome, outcome
    assert outcome["result"]["status"] == "applied"
    row = position(db)
    if first_commits:
        assert (row["size"], row["average_entry_price"], row["version"]) == (4, Decimal("117.5"), 3)
    else:
        assert (row["size"], row["average_entry_price"], row["version"]) == (3, Decimal("120"), 2)
    st = fold(db, row["id"])
    assert (st["size"], st["avg_price"]) == (row["size"], row["average_entry_price"])


@pytest.mark.parametrize("first_commits", [True, False])
def test_same_key_for_another_position_waits_and_is_duplicate(db, connect, first_commits):
    """Two deliveries of one execution naming different positions take different row locks; the
    second waits on the ledger key until the first ends: duplicate after a commit, applied after a
    rollback; never an error, never both."""
    s1, s2 = connect(), connect()
    apply_order(s1, exec_a("k1", "Buy", 1, 100, "0", 0, asset="BTCUSDT"))
    t, outcome = start_apply(s2, exec_a("k1", "Buy", 1, 100, "0", 0, asset="ETHUSDT"))
    wait_until_blocked(db, s2.info.backend_pid)
    s1.commit() if first_commits else s1.rollback()
    t.join(WAIT_LIMIT)
    assert not t.is_alive() and "error" not in outcome, outcome
    assert outcome["result"]["status"] == ("duplicate" if first_commits else "applied")
    assert counts(db)["pm.executions"] == 1 and counts(db)["pm.outbox"] == 1
    applied_to = db.execute("SELECT p.asset FROM pm.executions x JOIN positions p ON p.id = x.position_id").fetchone()[0]
    assert applied_to == ("BTCUSDT" if first_commits else "ETHUSDT")


def test_second_writer_gives_up_with_lock_timeout_and_retries(db, connect):
    apply_order(db, exec_a("f0", "Buy", 1, 100, "0", 0))
    s1, s2 = connect(), connect()
    apply_order(s1, exec_a("f1", "Buy", 1, 110, "0", 1))
    s2.execute("SET lock_timeout = '200ms'")
    before = counts(db)
    with pytest.raises(psycopg.errors.LockNotAvailable):           # 55P03: retry later
        apply_order(s2, exec_a("f2", "Buy", 1, 120, "0", 2))
    s2.rollback()
    s1.commit()
    assert counts(db)["pm.executions"] == before["pm.executions"] + 1
    assert apply_order(s2, exec_a("f2", "Buy", 1, 120, "0", 2))["status"] == "applied"
    s2.commit()
    assert (position(db)["size"], position(db)["version"]) == (3, 3)


@pytest.mark.parametrize("first_commits", [True, False])
def test_creation_race_of_a_new_position(db, connect, first_commits):
    s1, s2 = connect(), connect()
    apply_order(s1, exec_a("n1", "Sell", 1, 100, "0", 1, asset="NEWUSDT"))
    assert position(db, "NEWUSDT") is None                          # not visible before commit
    t, outcome = start_apply(s2, exec_a("n2", "Sell", 1, 90, "0", 2, asset="NEWUSDT"))
    wait_until_blocked(db, s2.info.backend_pid)
    s1.commit() if first_commits else s1.rollback()
    t.join(WAIT_LIMIT)
    assert not t.is_alive() and "error" not in outcome, outcome
    rows = db.execute("SELECT count(*) FROM public.positions WHERE asset = 'NEWUSDT'").fetchone()[0]
    assert rows == 1
    row = position(db, "NEWUSDT")
    assert row["size"] == (-2 if first_commits else -1)
    assert row["version"] == (2 if first_commits else 1)


def test_a_batch_racing_a_concurrent_delivery_of_its_key_is_retried_and_then_finds_it(db, connect):
    """pm.apply_batch looks up its keys once, then inserts the in-order rows of a position in one
    statement: a key that another transaction applies in between (here to another symbol) makes
    that insert wait for it, then fail with 40001, the batch is applied again, and the key is a
    duplicate; nothing of the first attempt remains."""
    s1, s2 = connect(), connect()
    apply_order(s1, exec_a("race", "Buy", 1, 100, "0", 1, asset="ETHUSDT"))     # not committed yet
    bodies = Jsonb([exec_a("r0", "Buy", 1, 100, "0", 1), exec_a("r1", "Buy", 1, 100, "0", 2),
                    exec_a("race", "Buy", 5, 100, "0", 3)])
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = s2.execute("SELECT pm.apply_batch('order', %s)", (bodies,)).fetchone()[0]
        except BaseException as exc:
            outcome["error"] = exc
        s2.rollback()

    t = threading.Thread(target=run)
    t.start()
    wait_until_blocked(db, s2.info.backend_pid)
    s1.commit()
    t.join(WAIT_LIMIT)
    assert not t.is_alive()
    assert isinstance(outcome.get("error"), psycopg.errors.SerializationFailure), outcome
    assert position(db) is None and counts(db)["pm.executions"] == 1
    again = s2.execute("SELECT pm.apply_batch('order', %s)", (bodies,)).fetchone()[0]
    s2.commit()
    assert [r["status"] for r in again] == ["applied", "applied", "duplicate"]
    assert position(db)["size"] == 2 and counts(db)["pm.executions"] == 3
