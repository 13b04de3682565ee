"""Fixtures and helpers of the extras tests (issue 7): fills and prices through the SQL core,
as the consumers and jobs apply them, and calls of the extras functions."""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import psycopg
import pytest

from app.db import q


def fill(db, asset: str, side: str, qty: str, price: str, *, at: str = "2025-01-27T10:00:00Z", fee: str = "0",
         mode: str | None = None, position_idx: int | None = None, trace: str | None = None) -> dict:
    """One execution (order event shape A) through pm.apply_order_event."""
    event = {"event_id": str(uuid.uuid4()), "event_type": "order_executed", "execution_id": str(uuid.uuid4()),
             "order_id": str(uuid.uuid4()), "asset": asset, "side": side, "execution_quantity": qty,
             "execution_price": price, "execution_fees": fee, "executed_at": at}
    if mode:
        event["mode"] = mode
    if position_idx is not None:
        event["position_idx"] = position_idx
    if trace:
        event["trace_id"] = trace
    (result,) = db.execute(q("apply_order_event"), {"event": json.dumps(event)}).fetchone()
    assert result["status"] == "applied", result
    return result["position"]


def set_prices(db, prices: dict[str, str]) -> dict:
    (result,) = db.execute(q("extras_set_prices"), {"prices": json.dumps(prices), "trace": "t-prices",
                                                     "actor": "test"}).fetchone()
    return json.loads(result)


def call(db, query: str, **args):
    """One extras query; its JSON text result parsed."""
    (result,) = db.execute(q(query), args).fetchone()
    return json.loads(result) if isinstance(result, str) else result


def sqlstate_of(db, query: str, **args) -> tuple[str, str]:
    """(SQLSTATE, message) of a call that must fail."""
    with pytest.raises(psycopg.Error) as info:
        call(db, query, **args)
    return info.value.sqlstate, info.value.diag.message_primary


def position_row(db, asset: str, mode: str = "one-way") -> dict:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT * FROM public.positions WHERE asset = %s AND mode = %s", (asset, mode)).fetchone()


def D(value) -> Decimal | None:
    return None if value is None else Decimal(str(value))
