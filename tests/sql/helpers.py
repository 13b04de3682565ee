"""Helpers for the SQL-core tests: event builders, calls, row reads and a pure-Python reference
of the fill accounting of SPEC §2.2 (Decimal, averages and realized PnL rounded to 8 decimals
like the shared tables' DECIMAL(20,8))."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
EIGHT = Decimal("0.00000001")
TOL = Decimal("0.000001")          # the worked examples are checked to 1e-6

# Tables whose row counts prove that "nothing was written".
WRITTEN_TABLES = ("public.positions", "public.position_snapshots", "pm.executions", "pm.outbox",
                  "pm.order_progress", "pm.exchange_state", "pm.discrepancies")


def at(minutes: float) -> str:
    """ISO 8601 UTC time `minutes` after T0."""
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def at_naive(minutes: float) -> datetime:
    """The same instant as `at`, as the naive UTC timestamp the shared tables store."""
    return (T0 + timedelta(minutes=minutes)).replace(tzinfo=None)


def at_ms(minutes: float) -> str:
    """The same instant as epoch milliseconds (Bybit's execTime / updatedTime)."""
    return str(int((T0 + timedelta(minutes=minutes)).timestamp() * 1000))


# ---------------------------------------------------------------------------------------------
# Event builders (SPEC §2.3)
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


# ---------------------------------------------------------------------------------------------
# Reference implementation of SPEC §2.2 (one-way and hedge), independent of the SQL
# ---------------------------------------------------------------------------------------------

def r8(x: Decimal) -> Decimal:
    """Round half away from zero to 8 decimals, like PostgreSQL's round(numeric, 8)."""
    return x.quantize(EIGHT, rounding=ROUND_HALF_UP)


def sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


@dataclass
class Fill:
    side: str          # Buy | Sell
    qty: Decimal
    price: Decimal
    fee: Decimal
    minute: float
    leg: int = 0       # 0 one-way, 1 hedge long, 2 hedge short
    funding: bool = False   # Bybit execType Funding: realized PnL only


@dataclass
class RefState:
    size: Decimal = Decimal(0)
    avg: Decimal | None = None
    long_size: Decimal = Decimal(0)
    long_avg: Decimal | None = None
    short_size: Decimal = Decimal(0)
    short_avg: Decimal | None = None
    realized: Decimal = Decimal(0)
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    history: list = field(default_factory=list)

    def flat(self) -> bool:
        return self.size == 0 and self.long_size == 0 and self.short_size == 0


def ref_apply(st: RefState, f: Fill) -> RefState:
    """One fill, exactly as SPEC §2.2 states it."""
    when = at_naive(f.minute)
    was_flat = st.flat()
    if f.funding:
        st.realized = r8(st.realized - f.fee)
        return st
    if f.leg == 0:
        d = f.qty if f.side == "Buy" else -f.qty
        if st.size == 0 or sign(st.size) == sign(d):
            st.avg = r8((abs(st.size) * (st.avg or 0) + f.qty * f.price) / (abs(st.size) + f.qty))
            st.size += d
        else:
            c = min(abs(st.size), f.qty)
            st.realized += c * (f.price - st.avg) * sign(st.size)
            new = st.size + d
            if new == 0:
                st.avg = None
            elif sign(new) != sign(st.size):
                st.avg = f.price
                st.opened_at, st.closed_at = when, None
            st.size = new
    elif f.leg == 1:
        if f.side == "Buy":
            st.long_avg = r8((st.long_size * (st.long_avg or 0) + f.qty * f.price) / (st.long_size + f.qty))
            st.long_size += f.qty
        else:
            assert f.qty <= st.long_size, "reference: long leg reduced below zero"
            st.realized += f.qty * (f.price - st.long_avg)
            st.long_size -= f.qty
            st.long_avg = None if st.long_size == 0 else st.long_avg
        st.size = st.long_size - st.short_size
    else:
        if f.side == "Sell":
            st.short_avg = r8((st.short_size * (st.short_avg or 0) + f.qty * f.price) / (st.short_size + f.qty))
            st.short_size += f.qty
        else:
            assert f.qty <= st.short_size, "reference: short leg reduced below zero"
            st.realized += f.qty * (st.short_avg - f.price)
            st.short_size -= f.qty
            st.short_avg = None if st.short_size == 0 else st.short_avg
        st.size = st.long_size - st.short_size
    st.realized = r8(st.realized - f.fee)
    if was_flat and not st.flat():
        st.opened_at, st.closed_at = when, None
    elif not was_flat and st.flat():
        st.closed_at = when
    return st


def ref_fold(fills: list[Fill]) -> RefState:
    """The reference position after `fills`, applied in time order (ties keep list order)."""
    st = RefState()
    for f in sorted(fills, key=lambda x: x.minute):
        ref_apply(st, f)
    return st


def messages(conn: psycopg.Connection) -> list[dict]:
    """The unpublished outbox events as the relay would publish them (pm.outbox_claim adds the event
    fields to the stored payload), oldest first. Claims nothing for good: autocommit releases the locks
    and nothing is marked published."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM pm.outbox_claim(100000)").fetchall()
