"""Calls of the SQL core that tests of several layers share (the SQL tests of the extras
functions, the API tests): a fill with a default time, prices set as the price job or an operator
sets them, a named query with its JSON result, and the SQLSTATE of a call that must fail."""
from __future__ import annotations

import json
from decimal import Decimal

import psycopg
import pytest

from app.db import q
from tests.sql.helpers import fill_position


def fill(db, asset: str, side: str, qty: str, price: str, *, at: str = "2025-01-27T10:00:00Z", fee: str = "0",
         mode: str | None = None, position_idx: int | None = None, trace: str | None = None) -> dict:
    """One execution (order event shape A) through pm.apply_order_event; the Position after it."""
    return fill_position(db, asset, side, qty, price, at=at, fee=fee, mode=mode, position_idx=position_idx,
                         trace=trace)


def set_prices(db, prices: dict[str, str]) -> dict:
    """Prices as bin/refresh-prices sets them (source exchange)."""
    (result,) = db.execute(q("job_set_prices"), {"prices": json.dumps(prices), "trace": None,
                                                  "actor": "test"}).fetchone()
    return result


def push_prices(db, prices: dict[str, str]) -> dict:
    """Prices as POST /api/v1/prices sets them (source manual, audited with a trace id)."""
    (result,) = db.execute(q("extras_set_prices"), {"prices": json.dumps(prices), "trace": "t-prices",
                                                     "actor": "test"}).fetchone()
    return json.loads(result)


def call(db, query: str, **args):
    """One named query of app/queries.sql; its JSON text result parsed."""
    (result,) = db.execute(q(query), args).fetchone()
    return json.loads(result) if isinstance(result, str) else result


def sqlstate_of(db, query: str, **args) -> tuple[str, str]:
    """(SQLSTATE, message) of a call that must fail."""
    with pytest.raises(psycopg.Error) as info:
        call(db, query, **args)
    return info.value.sqlstate, info.value.diag.message_primary


def insert_legacy(db, statement: str) -> None:
    """A positions row as a deployment finds it from before this service ran: inserted with the
    triggers off (session_replication_role = replica), so it is not a foreign write and has no ledger
    (its state becomes the opening balance at its first fill)."""
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(statement)


def D(value) -> Decimal | None:
    return None if value is None else Decimal(str(value))
