"""The API's own SQL: the token-bucket rate limit (no burst across a minute boundary; a property over
any span of time), the position list, called directly, and the code files run twice with psql."""
from __future__ import annotations

import itertools
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.sql.calls import fill

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
API_FILES = ["repeatable/85_api_reads.sql", "repeatable/90_api_access.sql"]


def take(db, at: float, key: str = "k" * 64, limit: int = 60):
    """One request of the key at epoch second `at`: (allowed, remaining, retry_after, reset_after)."""
    return db.execute("SELECT allowed, remaining, retry_after, reset_after FROM pm.rate_limit_take(%s, %s, %s)",
                      (key, limit, at)).fetchone()


def fixed_window_allowed(times: list[float], limit: int) -> int:
    """What the fixed 60-second window of the previous release let through (a count per key and
    minute, every request counted): the reference the token bucket is held against."""
    counts: dict[int, int] = {}
    allowed = 0
    for t in times:
        window = int(t // 60)
        counts[window] = counts.get(window, 0) + 1
        allowed += counts[window] <= limit
    return allowed


def test_the_boundary_burst_is_gone(db):
    """`limit` requests in the last half second of a minute and `limit` more in the first half second
    of the next: the fixed window let all 2 x limit through; the bucket lets `limit` through (less
    than one token, one a second at 60/min, is refilled in the 0.99 s the two bursts take)."""
    limit, minute = 60, 1_800_000_000 // 60 * 60 + 60
    times = [minute - 0.5 + i * (0.5 / limit) for i in range(limit)] + \
            [minute + i * (0.5 / limit) for i in range(limit)]
    allowed = sum(take(db, t, limit=limit)[0] for t in times)
    assert fixed_window_allowed(times, limit) == 2 * limit
    assert allowed == limit
    assert take(db, minute + 0.5, limit=limit)[0] is True   # a second after the first: one token again


def test_a_bucket_refills_one_token_per_interval_and_says_when(db):
    assert [take(db, 1000.0, limit=3)[:2] for _ in range(4)] == [(True, 2), (True, 1), (True, 0), (False, 0)]
    allowed, _, retry_after, reset_after = take(db, 1000.0, limit=3)
    assert not allowed and retry_after == pytest.approx(20.0) and reset_after == pytest.approx(60.0)
    assert take(db, 1019.9, limit=3)[0] is False        # not yet
    assert take(db, 1020.0, limit=3)[:2] == (True, 0)   # one token every 20 s at 3/min
    assert take(db, 1000.0, key="other", limit=3)[:2] == (True, 2)   # every key has its own bucket
    assert take(db, 2000.0, limit=3)[:2] == (True, 2)   # a quiet key's bucket is full again


def test_a_client_at_the_limit_rate_is_never_refused(db):
    assert all(take(db, 5000.0 + i * 0.5, limit=120)[0] for i in range(300))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(gaps=st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), min_size=1, max_size=150),
       limit=st.integers(min_value=1, max_value=40))
def test_no_span_lets_more_through_than_the_bucket_and_its_refill(connect, gaps, limit):
    """Property: over any span of w seconds at most limit + w * limit / 60 requests are allowed, and a
    request is refused only when the span before it already used that much."""
    db = connect(autocommit=True)
    key = uuid.uuid4().hex
    times = list(itertools.accumulate(gaps, initial=10_000.0))
    allowed = [t for t in times if take(db, t, key=key, limit=limit)[0]]
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            span = allowed[j] - start
            assert j - i + 1 <= limit + span * limit / 60 + 1e-6


def lease(db, at: float, tokens: int, key: str = "k" * 64, limit: int = 60):
    """One take of up to `tokens` tokens at epoch second `at`: (granted, remaining, retry_after)."""
    return db.execute("SELECT granted, remaining, retry_after FROM pm.rate_limit_lease(%s, %s, %s, %s)",
                      (key, limit, tokens, at)).fetchone()


def test_a_lease_takes_what_the_bucket_holds_and_no_more(db):
    assert lease(db, 1000.0, 4, limit=10) == (4, 6, 0)
    assert lease(db, 1000.0, 8, limit=10) == (6, 0, 0)          # only the six left
    granted, remaining, retry_after = lease(db, 1000.0, 3, limit=10)
    assert (granted, remaining) == (0, 0) and retry_after == pytest.approx(6.0)   # one token every 6 s
    assert take(db, 1006.0, limit=10)[:2] == (True, 0)           # the same bucket as single takes
    assert lease(db, 1000.0, 50, key="fresh", limit=10)[:2] == (10, 0)   # a new key: a full bucket at most
    assert db.execute("SELECT taken FROM pm.api_rate_state WHERE key_hash = 'fresh'").fetchone() == (10,)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(takes=st.lists(st.tuples(st.floats(min_value=0, max_value=3, allow_nan=False), st.integers(1, 6)),
                      min_size=1, max_size=120),
       limit=st.integers(min_value=1, max_value=40))
def test_no_span_takes_more_tokens_than_the_bucket_and_its_refill(connect, takes, limit):
    """Property: whatever the sizes of the takes, over any span of w seconds at most
    limit + w * limit / 60 tokens are granted, and a take is refused only when the bucket is empty."""
    db = connect(autocommit=True)
    key = uuid.uuid4().hex
    t, granted = 10_000.0, []
    for gap, tokens in takes:
        t += gap
        n, remaining, _ = lease(db, t, tokens, key=key, limit=limit)
        assert 0 <= n <= tokens and (n == tokens or remaining == 0)
        granted += [t] * n
    for i, start in enumerate(granted):
        for j in range(i, len(granted)):
            assert j - i + 1 <= limit + (granted[j] - start) * limit / 60 + 1e-6


def test_tokens_given_back_can_be_taken_again_and_never_overfill_the_bucket(db):
    now = time.time()
    assert lease(db, now, 100, key="r", limit=60)[:2] == (60, 0)
    db.execute("SELECT pm.rate_limit_return('r', 60, 5)")
    assert lease(db, now, 100, key="r", limit=60)[:2] == (5, 0)
    db.execute("SELECT pm.rate_limit_return('r', 60, 500)")      # more than it holds: a full bucket
    assert lease(db, time.time(), 100, key="r", limit=60)[0] == 60
    db.execute("SELECT pm.rate_limit_return('nobody', 60, 5)")   # an unknown key: nothing to do
    assert db.execute("SELECT count(*) FROM pm.api_rate_state WHERE key_hash = 'nobody'").fetchone() == (0,)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT pm.rate_limit_return('r', 60, -1)")


def test_the_previous_signature_takes_from_the_bucket(db):
    rows = [db.execute("SELECT allowed, hits, reset_seconds FROM pm.rate_limit_hit(%s, 3)", ("h" * 64,)).fetchone()
            for _ in range(4)]
    assert [r[:2] for r in rows] == [(True, 1), (True, 2), (True, 3), (False, 3)]
    assert all(1 <= r[2] <= 60 for r in rows)


@pytest.mark.parametrize("args", [("", 5, 1), (None, 5, 1), ("k", -1, 1), ("k", 0, 1), ("k", 5, 0), ("k", 5, None)])
def test_rate_limit_rejects_bad_arguments(db, args):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT * FROM pm.rate_limit_lease(%s, %s, %s)", args)
    if args[2] == 1:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            db.execute("SELECT * FROM pm.rate_limit_take(%s, %s)", args[:2])


def test_list_positions_in_sql(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Sell", "3", "10")
    (body,) = db.execute("SELECT pm.list_positions('btcusdt')").fetchone()
    assert [p["asset"] for p in body["positions"]] == ["BTCUSDT"] and body["total"] == 1
    (body,) = db.execute("SELECT pm.list_positions(p_size_min => 2, p_limit => 10)").fetchone()
    assert [p["asset"] for p in body["positions"]] == ["ETHUSDT"]
    (body,) = db.execute("SELECT pm.list_positions()").fetchone()
    assert body["count"] == 2 and body["total"] == 2


@pytest.mark.parametrize("call, parameter", [
    ("pm.list_positions(p_mode => 'both')", "mode"),
    ("pm.list_positions(p_status => 'x')", "status"),
    ("pm.list_positions(p_size_min => -1)", "size_min"),
    ("pm.list_positions(p_limit => -1)", "limit"),
    ("pm.list_positions(p_offset => -1)", "offset"),
])
def test_list_positions_names_the_bad_parameter(db, call, parameter):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"parameter {parameter}"):
        db.execute(f"SELECT {call}")


def psql(settings, *files: Path) -> None:
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", settings.postgres_host, "-p", str(settings.postgres_port),
            "-U", settings.postgres_user, "-d", settings.postgres_db]
    for path in files:
        args += ["-f", str(path)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def test_the_api_code_files_run_twice_with_psql(settings, db):
    take(db, 100.0, limit=3)
    files = [SQL_DIR / name for name in API_FILES]
    psql(settings, *files, *files)  # again over what bin/migrate applied: safe to run twice
    assert take(db, 100.0, limit=3)[:2] == (True, 1)   # the bucket's state is kept
    assert db.execute("SELECT pm.list_positions() ->> 'count'").fetchone()[0] == "0"
