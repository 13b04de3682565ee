"""The ytrader stack's services as the tests play them: what its producers send us and how its
clients read our answers (docs/ytrader.md describes the stack). Shared by the SQL, pipeline and
compat tests, so that every layer replays the same bytes.

`OrderManagerOrder` follows one order through order-manager: its row (DECIMAL(20,8) columns,
naive UTC timestamps, side "Buy" or "SELL") takes the exchange's cumulative figures on every
update, but an order event is published only when the status changes; the body is built field by
field as order-manager builds it (average_price and fees null when zero, executed_at null until
the order is filled, timestamps without a zone) and serialised with json.dumps(default=str).
"""
from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pika

T0 = datetime(2026, 3, 2, 9, 30, 0)          # naive UTC, as order-manager's columns hold it
DB_SCALE = Decimal("0.00000001")             # its orders table: DECIMAL(20, 8)

# Bybit's order statuses mapped to order-manager's (unknown ones lower-cased)
OM_STATUS = {"New": "pending", "PartiallyFilled": "partially_filled", "Filled": "filled",
             "Cancelled": "cancelled", "Rejected": "rejected"}

OM_QUEUE = "order-manager.order_events"     # where order-manager publishes (default exchange)


def _db(value) -> Decimal | None:
    """A value as order-manager reads it back from its DECIMAL(20,8) column."""
    return None if value is None else Decimal(str(value)).quantize(DB_SCALE)


class OrderManagerOrder:
    """One order of order-manager: `update()` is an exchange order update, returning the order
    event body it publishes (a dict, as json.loads reads it) or None when the status did not change."""

    def __init__(self, asset: str, side: str, quantity, price=None, *, order_type: str = "Limit",
                 order_id: str | None = None, dry_run: bool = False, at: float = 0) -> None:
        self.id = uuid.uuid4()
        self.order_id = order_id or str(uuid.uuid4())   # Bybit's order id
        self.signal_id = uuid.uuid4()
        self.asset = asset
        self.side = "Buy" if side.upper() == "BUY" else "SELL"
        self.order_type = order_type
        self.quantity = _db(quantity)
        self.price = _db(price)
        self.status = "pending"
        self.filled_quantity = _db(0)
        self.average_price: Decimal | None = None
        self.fees: Decimal | None = None
        self.created_at = self.updated_at = T0 + timedelta(seconds=at)
        self.executed_at: datetime | None = None
        self.trace_id = f"trace-{uuid.uuid4().hex[:12]}"
        self.is_dry_run = dry_run

    def update(self, bybit_status: str, cum_qty, avg_price=None, cum_fee=None, at: float = 1) -> dict | None:
        """Bybit's order update (orderStatus, cumExecQty, avgPrice, cumExecFee)."""
        new_status = OM_STATUS.get(bybit_status, bybit_status.lower())
        changed = new_status != self.status
        if new_status == "filled" and self.status != "filled":
            self.executed_at = T0 + timedelta(seconds=at)
        self.filled_quantity = _db(cum_qty)
        self.average_price = _db(avg_price) if avg_price not in (None, "", "0", 0) else None
        self.fees = _db(cum_fee) if cum_fee not in (None, "", "0", 0) else None
        self.updated_at = T0 + timedelta(seconds=at)
        self.status = new_status
        return self.event(new_status, at) if changed else None

    def event(self, event_type: str, at: float = 1) -> dict:
        """The enriched order event of order_event_publisher, as the consumer receives it."""
        latency = ((self.executed_at - self.created_at).total_seconds()
                   if self.executed_at and self.created_at else None)
        body = {
            "event_id": str(uuid.uuid4()),
            "event_type": event_type,
            "timestamp": (T0 + timedelta(seconds=at)).isoformat(),
            "trace_id": self.trace_id,
            "order": {
                "id": str(self.id), "order_id": self.order_id, "signal_id": str(self.signal_id),
                "asset": self.asset, "side": self.side, "order_type": self.order_type,
                "quantity": str(self.quantity), "price": str(self.price) if self.price else None,
                "status": self.status, "filled_quantity": str(self.filled_quantity),
                "average_price": str(self.average_price) if self.average_price else None,
                "fees": str(self.fees) if self.fees else None,
                "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
                "executed_at": self.executed_at.isoformat() if self.executed_at else None,
                "is_dry_run": self.is_dry_run,
            },
            "execution_details": {
                "execution_latency_seconds": latency,
                "fill_percentage": float(self.filled_quantity / self.quantity * 100),
                "remaining_quantity": str(self.quantity - self.filled_quantity),
            },
        }
        if self.average_price:
            body["market_conditions"] = {"price": float(self.average_price), "timestamp": body["timestamp"]}
        return json.loads(json.dumps(body, default=str))


def publish_order_event(channel, queue: str, body: dict) -> None:
    """Publish as order-manager does: default exchange, routing key = queue, transient (no
    delivery_mode), no message_id, content_type JSON, header trace_id."""
    channel.basic_publish("", queue, json.dumps(body, default=str).encode("utf-8"),
                          pika.BasicProperties(content_type="application/json", headers={"trace_id": body["trace_id"]}))


class FakeWsGateway:
    """A local HTTP server answering POST /api/v1/subscriptions like ws-gateway: each request gets
    the next status of `statuses` (the last one repeats): 200 with a subscription, 409 with
    ws-gateway's error body, anything else with a plain error. Requests are recorded (path,
    headers, JSON body). `hold` (a threading.Event) makes every request wait until it is set."""

    def __init__(self, statuses=(200,), hold: threading.Event | None = None) -> None:
        self.statuses = list(statuses)
        self.hold = hold
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": json.loads(raw or b"null")})
                if fake.hold is not None:
                    fake.hold.wait()
                status = fake.statuses.pop(0) if len(fake.statuses) > 1 else fake.statuses[0]
                if 200 <= status < 300:
                    body = {"id": str(uuid.uuid4()), "channel_type": "position", "symbol": None,
                            "topic": "position", "requesting_service": "position-manager", "is_active": True,
                            "created_at": datetime.utcnow().isoformat(), "updated_at": datetime.utcnow().isoformat(),
                            "last_event_at": None}
                elif status == 409:
                    body = {"detail": {"error": "Subscription already exists", "code": "SUBSCRIPTION_ERROR",
                                       "details": None}}
                else:
                    body = {"detail": "ws-gateway is not ready"}
                raw = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeWsGateway":
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()
