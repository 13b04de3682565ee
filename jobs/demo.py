"""bin/demo: publish a few realistic events so that a newcomer sees positions and a portfolio at once.

Fills for BTCUSDT and ETHUSDT (order-manager's per-execution shape A) and SOLUSDT (order-manager's
cumulative order events, shape B) go to the order queue; then ws-gateway position events with mark
prices go to the position queue, and bin/consume applies them. Without RabbitMQ (or with --via sql)
the same messages are applied directly with pm.apply_order_event / pm.apply_position_event.
Message ids are fixed, so running it twice changes nothing: the second run's fills are duplicates.
Writes demo data into POSTGRES_DB: meant for a development database."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pika
import psycopg

from app import broker, logs, sqlstates
from app.db import connect, q, write
from app.settings import Settings, entry_point, load
from jobs.common import database_failure

log = logging.getLogger("position_manager.demo")
_NS = uuid.UUID("6d0c1c5e-3f0e-4d59-9a55-0d3e6f1b2a10")


def _id(name: str) -> str:
    return str(uuid.uuid5(_NS, name))


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def order_events(now: datetime) -> list[dict]:
    """Fills, oldest first: two BTC buys and an ETH sell (shape A), a SOL order filled in two steps (shape B)."""
    t = now - timedelta(minutes=30)

    def shape_a(key, asset, side, qty, price, fee, minutes):
        return {"event_id": _id(f"{key}-event"), "event_type": "order_executed", "execution_id": _id(f"{key}-exec"),
                "order_id": _id(f"{key}-order"), "asset": asset, "side": side, "execution_quantity": qty,
                "execution_price": price, "execution_fees": fee, "executed_at": _iso(t + timedelta(minutes=minutes)),
                "mode": "one-way", "trace_id": f"demo-{key}"}

    def shape_b(step, event_type, cum_qty, avg, fees, minutes):
        at = _iso(t + timedelta(minutes=minutes))
        return {"event_id": _id(f"sol-{step}-event"), "event_type": event_type, "timestamp": at,
                "trace_id": f"demo-sol-{step}",
                "order": {"id": _id("sol-order-row"), "order_id": _id("sol-order"), "signal_id": _id("sol-signal"),
                          "asset": "SOLUSDT", "side": "Buy", "order_type": "Limit", "quantity": "100",
                          "price": "171.60", "status": event_type, "filled_quantity": cum_qty,
                          "average_price": avg, "fees": fees, "created_at": _iso(t), "updated_at": at,
                          "executed_at": at, "is_dry_run": False}}

    return [
        shape_a("btc-1", "BTCUSDT", "Buy", "0.25", "67250.5", "9.24569", 0),
        shape_a("btc-2", "BTCUSDT", "Buy", "0.15", "67480", "5.5671", 4),
        shape_a("eth-1", "ETHUSDT", "Sell", "3.5", "3480.25", "6.69948", 7),
        shape_b(1, "partially_filled", "40", "171.2", "3.7664", 10),
        shape_b(2, "filled", "100", "171.5", "9.4325", 12),
    ]


def position_events(now: datetime) -> list[dict]:
    """ws-gateway envelopes of Bybit's position stream: the same sizes, with mark prices."""
    millis = int(now.timestamp() * 1000)

    def envelope(symbol, side, size, entry, mark, unrealised, realised, seq):
        raw = {"positionIdx": 0, "symbol": symbol, "side": side, "size": size, "entryPrice": entry,
               "markPrice": mark, "positionValue": "", "unrealisedPnl": unrealised, "cumRealisedPnl": realised,
               "updatedTime": str(millis), "seq": seq, "tradeMode": 0, "positionStatus": "Normal"}
        return {"event_id": _id(f"pos-{symbol}-{millis}"), "event_type": "position", "topic": "position",
                "timestamp": _iso(now), "received_at": _iso(now), "trace_id": f"demo-pos-{symbol.lower()}",
                "payload": {"symbol": symbol, "size": size, "side": side, "avg_price": None,
                            "unrealised_pnl": unrealised, "realised_pnl": realised, "mode": 0,
                            "timestamp": _iso(now), "raw": raw}}

    return [
        envelope("BTCUSDT", "Buy", "0.4", "67336.5625", "67900.1", "225.415", "-14.81279", 81234567),
        envelope("ETHUSDT", "Sell", "3.5", "3480.25", "3455.8", "85.575", "-6.69948", 81234568),
        envelope("SOLUSDT", "Buy", "100", "171.5", "173.05", "155", "-9.4325", 81234569),
    ]


def rabbit_reachable(settings: Settings) -> bool:
    try:
        broker.connect(settings, "demo-probe").close()
        return True
    except broker.BROKER_ERRORS:
        return False


def publish(settings: Settings, queue: str, events: list[dict]) -> None:
    """Publish persistent JSON messages with publisher confirms (an unroutable one is an error)."""
    connection = broker.connect(settings, "demo")
    try:
        channel = broker.declare_queue(connection, connection.channel(), settings, queue)
        broker.ConfirmingPublisher(connection, channel).publish_all(
            (queue, json.dumps(event).encode(),
             pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                                  message_id=event["event_id"], headers={"trace_id": event.get("trace_id")}))
            for event in events)
    finally:
        connection.close()


def apply_sql(conn: psycopg.Connection, query: str, events: list[dict]) -> list[str]:
    """Apply each event in its own transaction; return the problems (the demo goes on)."""
    problems = []
    for event in events:
        try:
            write(conn, query, {"event": json.dumps(event)})
        except psycopg.Error as exc:
            message = exc.diag.message_primary or " ".join(str(exc).split())
            problems.append(f"{event.get('trace_id')}: SQLSTATE {exc.sqlstate}: {message}")
    return problems


def wait_for(conn: psycopg.Connection, symbols: set[str], deadline: float, priced: bool) -> set[str]:
    """Symbols among `symbols` that have an open position (with a price when priced) before the deadline."""
    while True:
        rows = conn.execute(q("demo_open_positions")).fetchall()
        seen = {asset for asset, price in rows if asset in symbols and (price is not None or not priced)}
        if seen == symbols or time.monotonic() >= deadline:
            return seen
        time.sleep(0.2)


@entry_point("bin/demo")
def main(argv: list[str] | None = None, environ=None) -> int:
    parser = argparse.ArgumentParser(prog="bin/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--via", choices=["auto", "queue", "sql"], default="auto",
                        help="auto (default): the queues when RabbitMQ answers, else SQL directly")
    parser.add_argument("--wait", type=float, default=20.0,
                        help="seconds to wait for bin/consume to apply queued events (default 20)")
    args = parser.parse_args(argv)
    settings = load(environ)
    logs.setup("position-manager-demo", settings.log_level)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    orders, positions = order_events(now), position_events(now)
    symbols = {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    via = args.via
    if via == "auto":
        via = "queue" if rabbit_reachable(settings) else "sql"
    problems: list[str] = []
    try:
        with connect(settings, autocommit=True) as conn:
            if via == "queue":
                publish(settings, settings.order_queue, orders)
                # The exchange's view after the fills, as in real life: positions first exist from fills.
                filled = wait_for(conn, symbols, time.monotonic() + args.wait, priced=False)
                publish(settings, settings.position_queue, positions)
                seen = wait_for(conn, filled, time.monotonic() + args.wait, priced=True)
                if seen != symbols:
                    problems.append(f"not visible after {args.wait:g} s: {', '.join(sorted(symbols - seen))} "
                                    f"(is bin/consume running? see pm.v_dead_letters)")
            else:
                problems += apply_sql(conn, "apply_order_event", orders)
                problems += apply_sql(conn, "apply_position_event", positions)
            portfolio = conn.execute(q("demo_portfolio")).fetchone()[0]
    except psycopg.Error as exc:
        print(f"bin/demo: failed: {database_failure(exc, settings)}", file=sys.stderr)
        return sqlstates.classify(exc).job_exit
    except Exception as exc:  # pika errors: say what failed, never a traceback for a demo
        print(f"bin/demo: failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        log.warning("demo event not applied", extra={"problem": problem})
        print(f"bin/demo: warning: {problem}", file=sys.stderr)
    route = (f"published to {settings.order_queue} and {settings.position_queue}" if via == "queue"
             else "applied directly with SQL (RabbitMQ not used)")
    print(f"demo: {len(orders)} order events and {len(positions)} position events {route}; portfolio: "
          f"{portfolio['open_positions_count']} open position(s), exposure {portfolio['total_exposure_usdt']} USDT, "
          f"unrealized PnL {portfolio['total_unrealized_pnl_usdt']} USDT")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
