"""position-manager as the trading stack meets it: order-manager's order events and ws-gateway's
position events, exactly as those services build and publish them (tests/ytrader.py), go through
the real consumers on RabbitMQ; then every client reads our answers the way its code does:
order-manager's Position and exposure models, model-service's REST reads and its
position_updated consumer, Grafana's Infinity panels (/health, /metrics, the portfolio) and SQL
panels. Real gunicorn, PostgreSQL
and RabbitMQ; only ws-gateway's subscription API is a fake."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from decimal import Decimal as D
from pathlib import Path

import pytest
import requests

from tests.api.conftest import Server, server_environ
from tests.conftest import base_environ
from tests.pipeline.conftest import Pipeline, wait_for
from tests.ytrader import (ClientRejected, FakeWsGateway, OrderManagerOrder, bybit_position, ms_position_size,
                           ms_position_size_norm, ms_position_update, ms_unrealized_pnl_pct, om_exposure, om_position,
                           publish_order_event, publish_ws_gateway, ws_gateway_messages, ws_gateway_messages_fixed)

ROOT = Path(__file__).resolve().parents[2]
DECIMALS = {"size", "long_size", "short_size", "average_entry_price", "long_avg_price", "short_avg_price",
            "current_price", "unrealized_pnl", "realized_pnl", "unrealized_pnl_pct", "position_size_norm",
            "exposure_usdt", "avg_price"}


@dataclass
class Stack:
    pipe: Pipeline
    api: Server
    ws: FakeWsGateway
    keys: dict[str, str]

    def get(self, client: str, path: str, **params) -> requests.Response:
        """A GET as that service sends it: its own key, and the Content-Type header both send."""
        headers = {"Content-Type": "application/json"}
        if client:
            headers["X-API-Key"] = self.keys[client]
        return requests.get(self.api.url + path, params=params or None, headers=headers, timeout=10)


def create_key(settings, name: str, scope: str, rate_limit: int) -> str:
    """`bin/api-keys create`, as the guide tells operators: one key per calling service."""
    env = base_environ(POSTGRES_DB=settings.postgres_db)
    out = subprocess.run([str(ROOT / "bin/api-keys"), "create", name, "--scope", scope, "--rate-limit", str(rate_limit)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


@pytest.fixture
def stack(pipe, start_server, settings):
    with FakeWsGateway(statuses=[201, 409]) as ws:
        ws_env = {"WS_GATEWAY_HOST": "127.0.0.1", "WS_GATEWAY_PORT": str(ws.port), "WS_GATEWAY_API_KEY": "ws-key"}
        # model-service declared its queue long before: durable, no arguments
        pipe.mq.channel().queue_declare(pipe.settings.position_updated_queue, durable=True)
        for role in ("order", "position", "relay"):
            pipe.start(role, **ws_env)
        # the whole service: every consumer role is expected alive (the default)
        api = start_server(server_environ(settings, POSITION_MANAGER_HEALTH_ROLES="order,position,relay", **ws_env))
        keys = {"order-manager": create_key(settings, "order-manager", "read", 1200),
                "model-service": create_key(settings, "model-service", "read", 6),
                "grafana": create_key(settings, "grafana", "read", 600)}
        yield Stack(pipe, api, ws, keys)


def check_representation(value, path="") -> None:
    """Decimals are strings that Decimal and float both read; times are ISO 8601 UTC with Z."""
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None:
                continue
            if key in DECIMALS or key.endswith("_usdt"):
                assert isinstance(item, str), f"{path}{key}: {item!r} is not a decimal string"
                assert D(item).is_finite() and float(item) == pytest.approx(float(D(item))), (key, item)
            elif key.endswith("_at") or key in ("timestamp", "last_updated"):
                assert isinstance(item, str) and item.endswith("Z"), f"{path}{key}: {item!r}"
            else:
                check_representation(item, f"{path}{key}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_representation(item, f"{path}{i}.")


def test_the_trading_stack_end_to_end(stack):
    pipe = stack.pipe
    channel = pipe.mq.channel()
    # order-manager: a limit buy that fills 1, then 0.5 more, then is cancelled (the last fill
    # arrives only in the cancelled event); a SELL that fills in two steps
    btc = OrderManagerOrder("BTCUSDT", "Buy", "2", "100")
    eth = OrderManagerOrder("ETHUSDT", "SELL", "3", "2000")
    events = [btc.update("PartiallyFilled", "1", "100", "0.02", at=1),
              eth.update("PartiallyFilled", "1", "2000", "0.6", at=1)]
    btc.update("PartiallyFilled", "1.5", "100.2", "0.03", at=2)
    events += [btc.update("Cancelled", "1.5", "100.2", "0.03", at=3), eth.update("Filled", "3", "2001", "1.8", at=3)]
    for body in events + events[:2]:               # and a producer retry of the first two
        publish_order_event(channel, pipe.settings.order_queue, body)
    wait_for(lambda: pipe.ledger_count() == 4, what="the four fills")
    # ws-gateway: Bybit's position message with both one-way positions (dropped by today's
    # ws-gateway, positionIdx 0; kept once it is fixed) and a hedge leg that it forwards today
    records = [bybit_position("BTCUSDT", "Buy", "1.5", "100.2", "110", seq=7, at=4, unrealised="14.7"),
               bybit_position("ETHUSDT", "Sell", "3", "2001", "1900", seq=8, at=4, unrealised="303"),
               bybit_position("XRPUSDT", "Buy", "100", "0.5", "0.55", idx=1, seq=9, at=4, unrealised="5")]
    today = ws_gateway_messages(records, at=4)
    assert [m["payload"]["symbol"] for m in today] == ["XRPUSDT"]
    for envelope in ws_gateway_messages_fixed(records, at=4)[:2] + today:
        publish_ws_gateway(channel, pipe.settings.position_queue, envelope)
    wait_for(lambda: pipe.one("SELECT count(*) FROM public.positions WHERE current_price IS NOT NULL") == 3,
             what="three positions priced by the exchange stream")
    wait_for(lambda: pipe.one("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL") == 0, what="events published")
    assert pipe.depth(pipe.settings.dead_letter_queue) == 0

    # ---- order-manager, on every trading signal: one-way position by asset; 404 = none
    response = stack.get("order-manager", "/api/v1/positions/BTCUSDT", mode="one-way")
    assert response.status_code == 200
    check_representation(response.json())
    position = om_position(response.json())
    assert (position["size"], position["average_entry_price"], position["mode"]) == (D("1.5"), D("100.2"), "one-way")
    assert position["realized_pnl"] == D("-0.03") and position["unrealized_pnl"] == D("14.7")
    assert stack.get("order-manager", "/api/v1/positions/DOGEUSDT", mode="one-way").status_code == 404
    listed = stack.get("order-manager", "/api/v1/positions")
    assert listed.status_code == 200
    check_representation(listed.json())
    by_asset = {p["asset"]: p for p in map(om_position, listed.json()["positions"])}
    assert by_asset["ETHUSDT"]["size"] == -3 and by_asset["XRPUSDT"]["mode"] == "hedge"
    exposure = om_exposure(stack.get("order-manager", "/api/v1/portfolio/exposure").json())
    assert exposure["total_exposure_usdt"] == D("1.5") * 110 + 3 * 1900 + 100 * D("0.55")

    # ---- model-service: REST reads (no mode), floats; 404 = none
    ms = stack.get("model-service", "/api/v1/positions/ETHUSDT")
    assert ms.status_code == 200
    assert ms_position_size(ms.json()) == 3.0
    assert ms_unrealized_pnl_pct(ms.json()) == pytest.approx(303 / (3 * 2001) * 100, rel=1e-6)
    assert 0 < ms_position_size_norm(ms.json()) < 1
    assert stack.get("model-service", "/api/v1/positions/DOGEUSDT").status_code == 404
    # ... and its position_updated consumer: the entry price from avg_price, never the placeholder
    updates = [json.loads(body) for _, body in pipe.drain(pipe.settings.position_updated_queue)]
    assert updates
    check_representation(updates)
    seen = [ms_position_update(u) for u in updates]
    last = {u["asset"]: u for u in seen}
    assert last["BTCUSDT"]["entry_price"] == 100.2 and last["ETHUSDT"]["entry_price"] == 2001.0
    assert all(u["entry_price"] != 1.0 for u in seen if u["asset"] != "XRPUSDT")

    # ---- Grafana: /health without a key, the Infinity panels with theirs, SQL on public.positions
    health = stack.get("", "/health")
    assert health.status_code == 200
    body = health.json()
    assert (body["service"], body["status"], body["database_connected"], body["queue_connected"]) == (
        "position-manager", "healthy", True, True)
    assert body["positions_count"] == 3 and body["ws_gateway"]["subscribed"] is True
    assert {role: c["alive"] for role, c in body["consumers"].items()} == {"order": True, "position": True, "relay": True}
    assert body["counters"]["foreign_writes"] == 0 and body["counters"]["order_events_without_price"] == 0
    assert stack.ws.requests and stack.ws.requests[0]["headers"]["X-API-Key"] == "ws-key"
    portfolio = stack.get("grafana", "/api/v1/portfolio", include_positions="true").json()
    check_representation(portfolio)
    panel = {name: float(portfolio[name]) for name in ("total_exposure_usdt", "total_unrealized_pnl_usdt",
                                                       "total_realized_pnl_usdt", "portfolio_value_usdt")}
    assert panel["total_exposure_usdt"] == float(exposure["total_exposure_usdt"])
    assert portfolio["open_positions_count"] == 3 and len(portfolio["positions"]) == 3
    metrics = stack.get("", "/metrics")                 # "Position Manager Metrics": JSON, no key
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("application/json")
    row = metrics.json()
    assert row["timestamp"].endswith("Z") and row["database_connected"] is True and row["queue_connected"] is True
    assert 0 <= float(row["portfolio_cache_hit_rate"]) <= 1     # a number once the portfolio was read
    pnl = stack.get("grafana", "/api/v1/portfolio/pnl").json()
    assert float(pnl["total_unrealized_pnl_usdt"]) == panel["total_unrealized_pnl_usdt"]
    rows = pipe.db.execute("SELECT id, asset, size, mode, closed_at, realized_pnl, unrealized_pnl, average_entry_price, "
                           "last_updated FROM positions WHERE closed_at IS NULL ORDER BY asset").fetchall()
    assert [(r[1], r[2], r[3]) for r in rows] == [("BTCUSDT", D("1.5"), "one-way"), ("ETHUSDT", -3, "one-way"),
                                                   ("XRPUSDT", 100, "hedge")]

    # ---- each calling service its own rate limit: model-service (6/min here) is out of budget,
    # order-manager's signals still get their positions
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 30:
        statuses.append(stack.get("model-service", "/api/v1/positions/BTCUSDT").status_code)
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
    assert stack.get("order-manager", "/api/v1/positions/BTCUSDT", mode="one-way").status_code == 200


def test_a_client_model_refuses_what_it_cannot_read():
    """The readers above are strict where the clients are: a test of the tests."""
    good = {"id": "8d0c51b4-6c1c-4b53-8a4a-2d8b0f3e5a11", "asset": "BTCUSDT", "mode": "one-way", "size": "1",
            "average_entry_price": "100", "last_updated": "2026-03-02T09:30:00.000000Z"}
    assert om_position(good)["size"] == 1
    for bad in ({"average_entry_price": "0"}, {"size": 1.5}, {"mode": "cross"}, {"last_updated": "2026-03-02T09:30:00"}):
        with pytest.raises((ClientRejected, ValueError)):
            om_position({**good, **bad})
    assert ms_position_update({"symbol": "BTCUSDT", "size": "1"})["entry_price"] == 1.0
