"""pm.parse_execution_event has a fast path for the plain form of order event shape A; anything else
goes to pm.parse_execution_event_checked. The two must agree on every input: the same request, or
the same error (SQLSTATE and message naming the field). Hypothesis mixes plain, unusual-but-valid and
invalid values for every field; the parse writes nothing, so one database serves the module."""
from __future__ import annotations

import json

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ABSENT = object()

assets = st.sampled_from(["BTCUSDT", "btcusdt", "1000PEPEUSDT", "BtcUsdt", " BTCUSDT", "BTCUSDT ", "BTC-27DEC24",
                          "B", "123", "", "BTC USDT", "A" * 20, "A" * 21, 12345, True, {"a": 1}, ["BTCUSDT"],
                          None, ABSENT])
sides = st.sampled_from(["Buy", "Sell", "buy", "SELL", "sell ", " Buy", "x", "", 1, True, None, ABSENT])
amounts = st.one_of(
    st.sampled_from(["0.5", "1.", ".5", "+1", "1e3", "1E-2", "-1", "0", "0.0", "0.000000001", "0.00000001",
                     "NaN", "Infinity", "-Infinity", "abc", "999999999999.99", "1000000000000", " 2 ", "",
                     "1e40", "00012.50", 2, 0.5, 0, -3, 1e3, True, None, [], {}, ABSENT]),
    st.decimals(min_value=0, max_value=10**12, places=8, allow_nan=False).map(lambda d: format(d, "f")))
fees = st.sampled_from(["0.1", "-0.1", "+0.1", "0", "-0", "1.5e-3", -0.2, 0, "x", "", None, ABSENT, "-999999999999.9"])
times = st.sampled_from([
    "2026-01-01T00:00:00Z", "2026-01-31T23:59:59.123456+00:00", "2026-01-15T10:20:30.123456789Z",
    "2026-02-29T00:00:00Z", "2024-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-04-30T12:00:00-05:00",
    "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z", "2026-01-01 00:00:00", "2026-01-01T00:00:00z",
    "2026-01-01T00:00:00+0530", "2026-01-01T00:00:00+14:59", "2026-01-01T00:00:00+16:00", "2026-01-01",
    "2026-13-01T00:00:00Z", "0999-01-01T00:00:00Z", "3026-01-01T00:00:00Z", "1767225600000", 1767225600000,
    "1767225600", " 2026-01-01T00:00:00Z", "", "garbage", None, ABSENT, 12.5, {"t": 1}])
ids = st.sampled_from(["e1", "exec-77f0", " e1", "e1 ", "", "{x", "[x", "a b", 123, True, {"x": 1}, ["a"], None,
                       ABSENT])
optional_ids = st.sampled_from(["o1", " o1", "", 7, None, ABSENT, {"x": 1}])
modes = st.sampled_from([ABSENT, None, "one-way", "hedge", "", "x", "HEDGE", 1])
idxs = st.sampled_from([ABSENT, None, 0, 1, 2, "0", "1", "2", "3", " 1", True, -1])


plain_times = st.builds(
    lambda y, mo, d, h, mi, sec, frac, zone: f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{sec:02d}{frac}{zone}",
    st.integers(1970, 2100), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23), st.integers(0, 59),
    st.integers(0, 59), st.sampled_from(["", ".5", ".123456", ".123456789"]),
    st.sampled_from(["Z", "+00:00", "-05:00", "+0530", "+14:00"]))
plain_amounts = st.decimals(min_value=0, max_value=10**12 - 1, places=8, allow_nan=False).map(lambda d: format(d, "f"))
plain_legs = st.sampled_from([{}, {"mode": "one-way"}, {"position_idx": 0}, {"mode": "one-way", "position_idx": "0"},
                              {"mode": "hedge", "position_idx": 1}, {"position_idx": "2"}, {"mode": None}])
weird = {"execution_id": ids, "asset": assets, "side": sides, "execution_quantity": amounts,
         "execution_price": amounts, "execution_fees": fees, "executed_at": times, "order_id": optional_ids,
         "trace_id": optional_ids, "event_id": optional_ids, "mode": modes, "position_idx": idxs}


@st.composite
def events(draw):
    """A plain event (the fast path's form, or close to it: zero amounts, 12 integer digits) with
    zero to two fields replaced by anything from the pools above."""
    event = {"execution_id": draw(st.sampled_from(["e1", "exec-77f0", "1234"])),
             "asset": draw(st.sampled_from(["BTCUSDT", "ethusdt", "1000PEPEUSDT"])),
             "side": draw(st.sampled_from(["Buy", "Sell", "buy", "SELL"])),
             "execution_quantity": draw(plain_amounts), "execution_price": draw(plain_amounts),
             "execution_fees": draw(st.sampled_from(["0", "0.01", "-0.002", "12.5"])),
             "executed_at": draw(plain_times), **draw(plain_legs)}
    for key in draw(st.lists(st.sampled_from(sorted(weird)), max_size=2, unique=True)):
        value = draw(weird[key])
        if value is ABSENT:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def parse(conn, fn: str, event: dict):
    try:
        return "ok", conn.execute(f"SELECT pm.{fn}(%s::jsonb)::text", (json.dumps(event),)).fetchone()[0]
    except psycopg.Error as exc:
        return "error", exc.sqlstate, exc.diag.message_primary


@settings(max_examples=1500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(event=events())
def test_fast_path_agrees_with_checked_parse(shared_migrated_db, event):
    assert parse(shared_migrated_db, "parse_execution_event", event) == \
        parse(shared_migrated_db, "parse_execution_event_checked", event)


PLAIN = {"execution_id": "e-1", "asset": "BTCUSDT", "side": "Buy", "execution_quantity": "0.5",
         "execution_price": "50000.5", "execution_fees": "-0.01", "executed_at": "2026-03-01T10:00:00.5+00:00",
         "order_id": "o-1", "trace_id": "t-1", "event_id": "ev-1"}


@pytest.mark.parametrize("event, checked_calls", [
    (PLAIN, 0),
    (dict(PLAIN, mode="hedge", position_idx=2, side="sell"), 0),
    (dict(PLAIN, executed_at="2026-03-31T10:00:00Z"), 1),     # day 29-31: the checked parse
    (dict(PLAIN, execution_quantity="5e-1"), 1),
    (dict(PLAIN, asset=" BTCUSDT"), 1),
])
def test_plain_form_takes_the_fast_path(shared_migrated_db, event, checked_calls):
    """Proves the property test above compares the fast path (and not the checked parse twice)."""
    conn = shared_migrated_db
    count = ("SELECT coalesce(pg_stat_get_xact_function_calls("
             "'pm.parse_execution_event_checked(jsonb)'::regprocedure), 0)")
    with conn.transaction():
        conn.execute("SET LOCAL track_functions = 'all'")
        before = conn.execute(count).fetchone()[0]
        conn.execute("SELECT pm.parse_execution_event(%s::jsonb)", (json.dumps(event),))
        after = conn.execute(count).fetchone()[0]
    assert after - before == checked_calls
    checked = parse(conn, "parse_execution_event_checked", event)
    assert checked[0] == "ok" and parse(conn, "parse_execution_event", event) == checked
