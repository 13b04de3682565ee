"""Fixtures and helpers of the extras tests: fills and prices through the SQL core,
as the consumers and jobs apply them, and calls of the extras functions."""
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


# ------------------------------------------------------------------ the API (Falcon app, real database)

from falcon import testing  # noqa: E402

from app.api import create_app, make_api_pool  # noqa: E402
# a real gunicorn (bin/serve) on a free port, killed at teardown: the API tests' fixture
from tests.api.conftest import pg_proxy, server_environ, start_server  # noqa: E402,F401

ENV_KEY = "test-key"


@pytest.fixture
def api_settings(settings):
    """Rate limiting on (stored keys have their own limits) but the environment key's is huge."""
    return settings.with_overrides(rate_limit_default=1_000_000, metrics_cache_ttl=60, stream_heartbeat=1,
                                   stream_max_seconds=3)


@pytest.fixture
def make_client():
    pools = []

    def _make(settings, key: str = ENV_KEY) -> testing.TestClient:
        pool = make_api_pool(settings)
        pools.append(pool)
        return testing.TestClient(create_app(pool, settings), headers={"X-API-Key": key})

    yield _make
    for pool in pools:
        pool.close()


@pytest.fixture
def client(make_client, api_settings) -> testing.TestClient:
    return make_client(api_settings)


def new_key(client, name: str, scope: str, rate_limit: int | None = None) -> str:
    """A stored key made through POST /api/v1/api-keys with the (admin) environment key."""
    body = {"name": name, "scope": scope}
    if rate_limit is not None:
        body["rate_limit"] = rate_limit
    response = client.simulate_post("/api/v1/api-keys", json=body)
    assert response.status_code == 201, response.text
    return response.json["key"]
