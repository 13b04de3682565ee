"""Invalid input: pm.apply_order_event and pm.apply_position_event raise an
SQLSTATE of class 22 whose message names the field, and write nothing.

All cases share one migrated database (module fixture): each case compares every table's row
count before and after, so a case that writes something fails on its own."""
from __future__ import annotations

import copy
import json

import psycopg
import pytest

from tests.sql.helpers import apply_order, at, at_ms, bybit_c, bybit_message, counts, exec_a, order_b, position

MISSING = object()


def with_field(base: dict, path: str, value) -> dict:
    """A copy of `base` with the dotted `path` set to `value` (or removed when MISSING)."""
    event = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = event
    for key in parents:
        target = target[key]
    if value is MISSING:
        target.pop(last, None)
    else:
        target[last] = value
    return event


BAD_NUMBERS = ["0", "-1", "abc", "NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "1e15", "1,5", "0x10",
               0, -1, "", None, True, [1], {"v": 1}, MISSING]
NUMBER_IDS = ["zero", "negative", "text", "NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "1e15", "comma", "hex",
              "json-zero", "json-negative", "empty", "null", "bool", "array", "object", "missing"]


def number_case(base, fld, value, vid, tag):
    return pytest.param(with_field(base, fld, value), fld, id=f"{tag}-{fld}-{vid}")

A = exec_a("bad-1", "Buy", "1", "100", "0.1", 0)
B = order_b("bad-o1", "filled", "Buy", "1", "100", "0.1", 0)
C = bybit_c("bad-e1", "Buy", "1", "100", "0.1", 0)


def order_cases():
    cases = []
    for fld in ("execution_quantity", "execution_price"):
        for value, vid in zip(BAD_NUMBERS, NUMBER_IDS):
            cases.append(number_case(A, fld, value, vid, "A"))
    for fld in ("execQty", "execPrice"):
        for value, vid in zip(BAD_NUMBERS, NUMBER_IDS):
            cases.append(number_case(C, fld, value, vid, "C"))
    # (a missing, null or zero average is not invalid: order-manager sends null for zero; see test_order_manager_events)
    for value, vid in [("-5", "negative"), ("NaN", "NaN"), ("Infinity", "Infinity"),
                       ("abc", "text"), ([], "array")]:
        cases.append(pytest.param(with_field(B, "order.average_price", value), "order.average_price", id=f"B-avg-{vid}"))
    for value, vid in [("-1", "negative"), ("NaN", "NaN"), ("abc", "text"), ({}, "object")]:
        cases.append(pytest.param(with_field(B, "order.filled_quantity", value), "order.filled_quantity",
                                  id=f"B-filled-{vid}"))
    cases.append(pytest.param(with_field(with_field(B, "order.filled_quantity", MISSING), "event_type", "partially_filled"),
                              "order.filled_quantity", id="B-filled-missing-partial"))
    # fees
    for base, fld, tag in ((A, "execution_fees", "A"), (C, "execFee", "C")):
        for value, vid in [("abc", "text"), ("NaN", "NaN"), ("Infinity", "Infinity"), ([], "array"), (MISSING, "missing")]:
            cases.append(pytest.param(with_field(base, fld, value), fld, id=f"{tag}-fee-{vid}"))
    cases.append(pytest.param(with_field(B, "order.fees", "abc"), "order.fees", id="B-fee-text"))
    # sides
    for base, fld, tag in ((A, "side", "A"), (C, "side", "C"), (B, "order.side", "B")):
        for value, vid in [("Hold", "unknown"), ("long", "long"), ("", "empty"), (1, "number"), (None, "null"),
                           (["Buy"], "array"), (MISSING, "missing")]:
            cases.append(pytest.param(with_field(base, fld, value), fld, id=f"{tag}-side-{vid}"))
    # symbols
    for base, fld, tag in ((A, "asset", "A"), (C, "symbol", "C"), (B, "order.asset", "B")):
        for value, vid in [("BTC/USDT", "slash"), ("", "empty"), ("btc usdt", "space"), ("X" * 25, "too-long"),
                           ("BTC_USDT", "underscore"), (["BTCUSDT"], "array"), ({"s": "BTCUSDT"}, "object"),
                           (MISSING, "missing")]:
            cases.append(pytest.param(with_field(base, fld, value), fld, id=f"{tag}-symbol-{vid}"))
    # times
    for base, fld, tag in ((A, "executed_at", "A"), (C, "execTime", "C")):
        for value, vid in [("yesterday", "text"), ("2026-13-45T00:00:00Z", "out-of-range"), ("123", "short-number"),
                           ({}, "object"), (True, "bool"), (MISSING, "missing")]:
            cases.append(pytest.param(with_field(base, fld, value), fld, id=f"{tag}-time-{vid}"))
    no_time = with_field(with_field(B, "order.executed_at", MISSING), "timestamp", MISSING)
    cases.append(pytest.param(no_time, "executed_at", id="B-time-missing"))
    cases.append(pytest.param(with_field(B, "order.executed_at", "yesterday"), "executed_at", id="B-time-text"))
    # other required fields of each shape
    cases.append(pytest.param(with_field(A, "execution_id", MISSING), "execution_id", id="A-missing-execution_id"))
    cases.append(pytest.param(with_field(A, "execution_id", {"id": 1}), "execution_id", id="A-execution_id-object"))
    cases.append(pytest.param(with_field(C, "execId", MISSING), "execId", id="C-missing-execId"))
    cases.append(pytest.param(with_field(with_field(B, "order.order_id", MISSING), "order.id", MISSING),
                              "order_id", id="B-missing-order-id"))
    cases.append(pytest.param(with_field(B, "event_type", MISSING), "event_type", id="B-missing-event_type"))
    cases.append(pytest.param(with_field(B, "event_type", ["filled"]), "event_type", id="B-event_type-array"))
    for value, vid in [([], "array"), ("x", "string"), (5, "number"), (None, "null")]:
        cases.append(pytest.param(with_field(B, "order", value), "order", id=f"B-order-{vid}"))
    # mode / position index
    for extra, fld, vid in [({"mode": "two-way"}, "mode", "mode-unknown"), ({"position_idx": 3}, "position_idx", "idx-3"),
                            ({"position_idx": "x"}, "position_idx", "idx-text"),
                            ({"mode": "hedge"}, "position_idx", "hedge-without-idx"),
                            ({"mode": "hedge", "position_idx": 0}, "position_idx", "hedge-idx-0"),
                            ({"mode": "one-way", "position_idx": 1}, "position_idx", "one-way-idx-1")]:
        cases.append(pytest.param({**A, **extra}, fld, id=f"A-{vid}"))
    cases.append(pytest.param(with_field(C, "positionIdx", 5), "positionIdx", id="C-idx-5"))
    cases.append(pytest.param(with_field(A, "trace_id", {"t": 1}), "trace_id", id="A-trace-object"))
    # Bybit messages
    good = bybit_c("bad-e2", "Buy", "1", "100", "0", 1)
    for msg, fld, vid in [({"topic": "execution", "data": "x"}, "data", "data-string"),
                          ({"topic": "execution", "data": []}, "data", "data-empty"),
                          ({"topic": "execution"}, "data", "data-missing"),
                          ({"topic": "execution", "data": [1]}, "data[0]", "data-number"),
                          (bybit_message(good, with_field(C, "execQty", "NaN")), "data[1]", "second-record-bad"),
                          ({"topic": "order", "data": [C]}, "topic", "topic-other"),
                          ({"topic": 5, "data": [C]}, "topic", "topic-number")]:
        cases.append(pytest.param(msg, fld, id=f"C-{vid}"))
    # not an order event at all
    for raw, vid in [('"x"', "string"), ("42", "number"), ("true", "bool"), ("null", "json-null"),
                     ('{"foo": 1}', "unknown-object"), ("{}", "empty-object")]:
        cases.append(pytest.param(raw, "event", id=f"not-an-event-{vid}"))
    cases.append(pytest.param("[]", ("event", "data"), id="not-an-event-empty-array"))
    return cases


def assert_rejected(conn, call, event, field):
    before = counts(conn)
    with pytest.raises(psycopg.Error) as err:
        call(conn, event)
    state = err.value.sqlstate
    message = err.value.diag.message_primary or ""
    assert state and state.startswith("22"), f"SQLSTATE {state}: {message}"
    fields = field if isinstance(field, tuple) else (field,)
    assert any(f in message for f in fields), f"message does not name {fields}: {message}"
    assert counts(conn) == before, "an invalid event wrote something"


def call_order(conn, event):
    return conn.execute("SELECT pm.apply_order_event(%s::jsonb)",
                        (event if isinstance(event, str) else json.dumps(event),)).fetchone()[0]


def call_position(conn, event):
    return conn.execute("SELECT pm.apply_position_event(%s::jsonb)",
                        (event if isinstance(event, str) else json.dumps(event),)).fetchone()[0]


@pytest.mark.parametrize("event, field", order_cases())
def test_bad_order_event(shared_migrated_db, event, field):
    assert_rejected(shared_migrated_db, call_order, event, field)


def test_sql_null_order_event(shared_migrated_db):
    assert_rejected(shared_migrated_db, lambda c, e: c.execute("SELECT pm.apply_order_event(NULL)").fetchone(),
                    None, "event")


@pytest.mark.parametrize("base, fld", [(A, "asset"), (C, "symbol"), (B, "order.asset")])
@pytest.mark.parametrize("value", [42, "42", "12345678"])
def test_digits_only_symbol_is_rejected(shared_migrated_db, base, fld, value):
    assert_rejected(shared_migrated_db, call_order, with_field(base, fld, value), fld)


def test_bad_event_does_not_touch_an_existing_position(db):
    apply_order(db, exec_a("ok-1", "Buy", "2", "100", "0", 0))
    before = position(db)
    for event, field in [(exec_a("bad-x", "Sell", "NaN", "100", "0", 1), "execution_quantity"),
                         (bybit_message(bybit_c("ok-2", "Sell", "1", "100", "0", 2),
                                        bybit_c("bad-y", "Sell", "1", "-1", "0", 3)), "data[1]")]:
        assert_rejected(db, call_order, event, field)
    assert position(db) == before


# ---------------------------------------------------------------------------------------------
# Position events
# ---------------------------------------------------------------------------------------------

P_RAW = {"positionIdx": 0, "symbol": "BTCUSDT", "side": "Buy", "size": "1", "avgPrice": "100", "markPrice": "101",
         "unrealisedPnl": "1", "cumRealisedPnl": "0", "updatedTime": at_ms(10), "seq": 1}
P_ENV = {"event_id": "e1", "event_type": "position", "topic": "position", "timestamp": at(10), "trace_id": "t",
         "payload": {"symbol": "BTCUSDT", "size": "1", "side": "Buy", "avg_price": None, "unrealised_pnl": "1",
                     "realised_pnl": "0", "mode": 0, "timestamp": at(10), "raw": dict(P_RAW)}}


def position_cases():
    cases = []
    for fld in ("size", "markPrice", "avgPrice", "unrealisedPnl"):
        for value, vid in [("abc", "text"), ("NaN", "NaN"), ("Infinity", "Infinity"), ([1], "array"), ({}, "object")]:
            cases.append(pytest.param(with_field(P_RAW, fld, value), fld, id=f"C-{fld}-{vid}"))
    cases.append(pytest.param(with_field(P_RAW, "avgPrice", "-5"), "avgPrice", id="C-avgPrice-negative"))
    cases.append(pytest.param(with_field(P_RAW, "size", MISSING), "size", id="C-size-missing"))
    for value, vid in [("Hold", "unknown"), (["Buy"], "array")]:
        cases.append(pytest.param(with_field(P_RAW, "side", value), "side", id=f"C-side-{vid}"))
    cases.append(pytest.param(with_field(P_RAW, "side", ""), "side", id="C-side-empty-with-size"))
    for value, vid in [("BTC/USDT", "slash"), ("btc usdt", "space"), ("", "empty"), (MISSING, "missing")]:
        cases.append(pytest.param(with_field(P_RAW, "symbol", value), "symbol", id=f"C-symbol-{vid}"))
    for value, vid in [(7, "idx-7"), ("x", "idx-text")]:
        cases.append(pytest.param(with_field(P_RAW, "positionIdx", value), "positionIdx", id=f"C-{vid}"))
    cases.append(pytest.param(with_field(P_RAW, "updatedTime", "soon"), "updatedTime", id="C-time-text"))
    cases.append(pytest.param(with_field(P_RAW, "updatedTime", MISSING), "updatedTime", id="C-time-missing"))
    for value, vid in [("x", "string"), ([], "array"), (None, "null")]:
        cases.append(pytest.param(with_field(P_ENV, "payload", value), "payload", id=f"A-payload-{vid}"))
    cases.append(pytest.param(with_field(with_field(P_ENV, "payload.size", MISSING), "payload.raw.size", "NaN"), "size",
                              id="A-raw-size-NaN"))
    cases.append(pytest.param(with_field(P_ENV, "event_type", "order"), "event_type", id="A-event_type-other"))
    cases.append(pytest.param(with_field(P_ENV, "payload.mode", "two-way"), "mode", id="A-mode-unknown"))
    for msg, fld, vid in [({"topic": "position", "data": "x"}, "data", "data-string"),
                          ({"topic": "position", "data": []}, "data", "data-empty"),
                          ({"topic": "position", "data": [P_RAW, with_field(P_RAW, "size", "NaN")]}, "data[1]",
                           "second-record-bad"),
                          ({"topic": "execution", "data": [P_RAW]}, "topic", "topic-other")]:
        cases.append(pytest.param(msg, fld, id=f"C-{vid}"))
    for raw, vid in [('"x"', "string"), ("42", "number"), ("null", "json-null"), ('{"foo": 1}', "unknown-object")]:
        cases.append(pytest.param(raw, "event", id=f"not-an-event-{vid}"))
    cases.append(pytest.param("[]", ("event", "data"), id="not-an-event-empty-array"))
    return cases


@pytest.mark.parametrize("event, field", position_cases())
def test_bad_position_event(shared_migrated_db, event, field):
    assert_rejected(shared_migrated_db, call_position, event, field)
