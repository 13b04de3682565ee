"""Helpers for the SQL-core tests: event builders, calls and row reads. The pure-Python reference
of the fill accounting is bench/reference.py (the benchmarks and the soak use it too); its names
are imported here for the tests."""
from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bench.reference import EIGHT, T0, Fill, RefState, at_naive, r8, ref_apply, ref_fold, sign  # noqa: F401

TOL = Decimal("0.000001")          # the worked examples are checked to 1e-6

# Tables whose row counts prove that "nothing was written".
WRITTEN_TABLES = ("public.positions", "public.position_snapshots", "pm.executions", "pm.outbox",
                  "pm.order_progress", "pm.exchange_state", "pm.discrepancies")


def at(minutes: float) -> str:
    """ISO 8601 UTC time `minutes` after T0."""
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def at_ms(minutes: float) -> str:
    """The same instant as epoch milliseconds (Bybit's execTime / updatedTime)."""
    return str(int((T0 + timedelta(minutes=minutes)).timestamp() * 1000))


# ---------------------------------------------------------------------------------------------
# Event builders (the order shapes A, B and C of docs/contract.md)
# ---------------------------------------------------------------------------------------------

def exec_a(key: str, side: str, qty, price, fee="0", minute: float = 0, asset: str = "BTCUSDT",
           **extra) -> dict:
    """Shape A: one per-execution event."""
    event = {"event_id": f"ev-{key}", "event_type": "order_executed", "execution_id": key,
             "order_id": f"ord-{key}", "asset": asset, "side": side,
             "execution_quantity": str(qty), "execution_price": str(price),
             "execution_fees": str(fee), "executed_at": at(minute), "trace_id": f"tr-{key}"}
    event.update(extra)
    return event


def hedge_a(key: str, idx: int, side: str, qty, price, fee="0", minute: float = 0,
            asset: str = "BTCUSDT") -> dict:
    return exec_a(key, side, qty, price, fee, minute, asset, mode="hedge", position_idx=idx)


def order_b(order_id: str, event_type: str, side: str, filled, avg, fees="0", minute: float = 0,
            asset: str = "BTCUSDT", quantity="1", **order_extra) -> dict:
    """Shape B: order-manager's order event, cumulative figures."""
    order = {"id": f"uuid-{order_id}", "order_id": order_id, "asset": asset, "side": side,
             "quantity": str(quantity), "filled_quantity": str(filled), "average_price": str(avg),
             "fees": str(fees), "status": event_type, "executed_at": at(minute)}
    order.update(order_extra)
    return {"event_id": f"ev-{order_id}-{filled}-{event_type}", "event_type": event_type,
            "timestamp": at(minute), "trace_id": f"tr-{order_id}", "order": order}


def bybit_c(exec_id: str, side: str, qty, price, fee="0", minute: float = 0, symbol: str = "BTCUSDT",
            exec_type: str = "Trade", seq: int = 1, **extra) -> dict:
    """Shape C: one Bybit execution record."""
    rec = {"category": "linear", "symbol": symbol, "execId": exec_id, "orderId": f"o-{exec_id}",
           "side": side, "execQty": str(qty), "execPrice": str(price), "execFee": str(fee),
           "execTime": at_ms(minute), "execType": exec_type, "seq": seq}
    rec.update(extra)
    return rec


def bybit_message(*records: dict) -> dict:
    return {"id": "msg-1", "topic": "execution", "creationTime": 1767225600000, "data": list(records)}


# ---------------------------------------------------------------------------------------------
# Calls and reads
# ---------------------------------------------------------------------------------------------

def apply_order(conn: psycopg.Connection, event: Any) -> dict:
    """pm.apply_order_event with a Python object (sent as jsonb) or raw JSON text."""
    param = event if isinstance(event, str) else Jsonb(event)
    return conn.execute("SELECT pm.apply_order_event(%s::jsonb)", (param,)).fetchone()[0]


def fill_position(conn: psycopg.Connection, asset: str, side: str, qty: str, price: str, *, at: str,
                  fee: str = "0", mode: str | None = None, position_idx: int | None = None,
                  trace: str | None = None) -> dict:
    """One execution (order event shape A, a fresh execution id) through pm.apply_order_event, as the
    consumer applies it; returns the Position after it (the result only names the position)."""
    event = {"event_id": str(uuid.uuid4()), "event_type": "order_executed", "execution_id": str(uuid.uuid4()),
             "order_id": str(uuid.uuid4()), "asset": asset, "side": side, "execution_quantity": qty,
             "execution_price": price, "execution_fees": fee, "executed_at": at}
    if mode:
        event["mode"] = mode
    if position_idx is not None:
        event["position_idx"] = position_idx
    if trace:
        event["trace_id"] = trace
    result = apply_order(conn, event)
    assert result["status"] == "applied", result
    ref = result["position"]
    (pos,) = conn.execute("SELECT pm.get_position(%s, %s)", (ref["asset"], ref["mode"])).fetchone()
    assert pos["version"] == ref["version"], (pos, ref)
    return pos


def apply_position(conn: psycopg.Connection, event: Any) -> dict:
    param = event if isinstance(event, str) else Jsonb(event)
    return conn.execute("SELECT pm.apply_position_event(%s::jsonb)", (param,)).fetchone()[0]


def position(conn: psycopg.Connection, asset: str = "BTCUSDT", mode: str = "one-way") -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM public.positions WHERE asset = %s AND mode = %s",
                           (asset, mode)).fetchone()


def fold(conn: psycopg.Connection, position_id) -> dict:
    """pm.fold_ledger(id) as a dict of the pm.pos_state fields."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT (pm.fold_ledger(%s)).*", (position_id,)).fetchone()


def counts(conn: psycopg.Connection) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in WRITTEN_TABLES}


def outbox_rows(conn: psycopg.Connection, position_id=None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        if position_id is None:
            return cur.execute("SELECT * FROM pm.outbox ORDER BY id").fetchall()
        return cur.execute("SELECT * FROM pm.outbox WHERE position_id = %s ORDER BY id",
                           (position_id,)).fetchall()


def counter(conn: psycopg.Connection, like: str) -> int:
    """Sum of the pm.counters whose name matches a LIKE pattern (names are the core's choice)."""
    return conn.execute("SELECT coalesce(sum(value), 0) FROM pm.counters WHERE name LIKE %s",
                        (like,)).fetchone()[0]


def close(a, b, tol: Decimal = TOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(Decimal(a) - Decimal(b)) <= tol


def dumps(obj: Any) -> str:
    return json.dumps(obj)


def messages(conn: psycopg.Connection) -> list[dict]:
    """The unpublished outbox events as the relay would publish them (pm.outbox_claim adds the event
    fields to the stored payload), oldest first. Claims nothing for good: autocommit releases the locks
    and nothing is marked published."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM pm.outbox_claim(100000)").fetchall()
