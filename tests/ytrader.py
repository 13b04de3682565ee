"""The ytrader stack's services as the tests play them: what its producers send us and how its
clients read our answers (docs/ytrader.md describes the stack). Shared by the SQL, pipeline and
compat tests, so that every layer replays the same bytes.

Producers: order-manager's order events (`OrderManagerOrder`, `publish_order_event`), ws-gateway's
position events (`bybit_position`, `ws_gateway_messages`, `publish_ws_gateway`), ws-gateway's
subscription API (`FakeWsGateway`). Clients: order-manager's Position and exposure models
(`om_position`, `om_exposure`), model-service's REST reads and its position_updated consumer
(`ms_position_size`, `ms_unrealized_pnl_pct`, `ms_position_size_norm`, `ms_position_update`).

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
from datetime import datetime, timedelta, timezone
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


# ---------------------------------------------------------------------------------------------
# ws-gateway's position events
# ---------------------------------------------------------------------------------------------

def bybit_position(symbol: str, side: str, size, entry, mark, *, idx: int = 0, seq: int = 1, at: float = 0,
                   unrealised="0", cum_realised="0") -> dict:
    """One record of Bybit's private position topic (v5), as Bybit sends it: strings for numbers,
    positionIdx and seq as integers, times as epoch milliseconds in strings."""
    ms = str(int((T0 + timedelta(seconds=at)).replace(tzinfo=timezone.utc).timestamp() * 1000))
    return {"positionIdx": idx, "tradeMode": 0, "riskId": 1, "riskLimitValue": "2000000", "symbol": symbol,
            "side": side, "size": str(size), "entryPrice": str(entry), "sessionAvgPrice": "", "leverage": "10",
            "positionValue": str(Decimal(str(size)) * Decimal(str(entry))), "positionBalance": "0",
            "markPrice": str(mark), "positionIM": "0", "positionMM": "0", "takeProfit": "0", "stopLoss": "0",
            "trailingStop": "0", "unrealisedPnl": str(unrealised), "curRealisedPnl": "0",
            "cumRealisedPnl": str(cum_realised), "createdTime": ms, "updatedTime": ms, "tpslMode": "Full",
            "liqPrice": "", "bustPrice": "", "category": "linear", "positionStatus": "Normal",
            "adlRankIndicator": 2, "autoAddMargin": 0, "seq": seq, "isReduceOnly": False}


def ws_gateway_messages(records: list[dict], at: float = 0) -> list[dict]:
    """What ws-gateway publishes for one Bybit position message: one envelope per record, all with
    the message's event_id, naive UTC timestamps; the payload as its normalizer builds it (size
    absolute, an empty side becomes null, avg_price from avgPrice which the stream does not send,
    mode = positionIdx, the whole record as raw). Records with positionIdx 0 are dropped, as
    ws-gateway does today (a falsy-zero check); ws_gateway_messages_fixed keeps them."""
    return _ws_gateway_messages(records, at, fixed=False)


def ws_gateway_messages_fixed(records: list[dict], at: float = 0) -> list[dict]:
    """ws_gateway_messages once ws-gateway keeps positionIdx 0 (one-way accounts)."""
    return _ws_gateway_messages(records, at, fixed=True)


def _ws_gateway_messages(records, at, fixed):
    event_id = str(uuid.uuid4())
    trace_id = str(uuid.uuid4())
    when = (T0 + timedelta(seconds=at)).isoformat()
    out = []
    for raw in records:
        mode = raw.get("positionIdx") if fixed else (raw.get("positionIdx") or raw.get("positionMode") or raw.get("mode"))
        if mode is None:
            continue
        payload = {"symbol": raw["symbol"], "size": str(abs(Decimal(raw["size"]))),
                   "side": raw.get("side") or raw.get("positionSide") or raw.get("sSide"),
                   "avg_price": raw.get("avgPrice") or raw.get("avgEntryPrice"),
                   "unrealised_pnl": str(Decimal(raw["unrealisedPnl"])) if raw.get("unrealisedPnl") else None,
                   "realised_pnl": str(Decimal(raw["cumRealisedPnl"])) if raw.get("cumRealisedPnl") else None,
                   "mode": mode, "timestamp": when, "source_channel": "position", "trace_id": trace_id, "raw": raw}
        out.append({"event_id": event_id, "event_type": "position", "topic": "position.position",
                    "timestamp": when, "received_at": when, "payload": payload, "trace_id": trace_id})
    return out


def publish_ws_gateway(channel, queue: str, envelope: dict) -> None:
    """Publish as ws-gateway does: default exchange, persistent, headers event_type/topic/trace_id."""
    channel.basic_publish("", queue, json.dumps(envelope).encode("utf-8"), pika.BasicProperties(
        delivery_mode=2, timestamp=int(datetime.utcnow().timestamp()),
        headers={"event_type": envelope["event_type"], "topic": envelope["topic"], "trace_id": envelope["trace_id"]}))


# ---------------------------------------------------------------------------------------------
# How the clients read our answers
# ---------------------------------------------------------------------------------------------

class ClientRejected(ValueError):
    """The client could not use our answer (its model validation would raise)."""


def _decimal(data: dict, name: str, *, positive: bool = False) -> Decimal | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClientRejected(f"{name}: expected a decimal string, got {value!r}")
    number = Decimal(value)
    if positive and not number > 0:
        raise ClientRejected(f"{name} must be > 0 when present, got {value}")
    return number


def _time(data: dict, name: str, *, required: bool) -> datetime | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ClientRejected(f"{name} is required")
        return None
    if not (isinstance(value, str) and value.endswith("Z")):
        raise ClientRejected(f"{name}: expected ISO 8601 UTC with Z, got {value!r}")
    return datetime.fromisoformat(value)


def om_position(data: dict) -> dict:
    """order-manager's Position.from_dict: UUID id, decimal strings into Decimal (the averages
    > 0 when present), mode one-way|hedge, ISO times; other fields ignored."""
    position = {"id": uuid.UUID(data["id"]), "asset": data["asset"], "mode": data.get("mode", "one-way").lower()}
    if position["mode"] not in ("one-way", "hedge") or len(position["asset"]) > 20:
        raise ClientRejected(f"mode/asset: {data.get('mode')!r} {data['asset']!r}")
    if data.get("size") is None:
        raise ClientRejected("size is required")
    for name in ("size", "unrealized_pnl", "realized_pnl", "long_size", "short_size"):
        position[name] = _decimal(data, name)
    for name in ("average_entry_price", "long_avg_price", "short_avg_price"):
        position[name] = _decimal(data, name, positive=True)
    position["last_updated"] = _time(data, "last_updated", required=False) or datetime.utcnow()
    position["last_snapshot_at"] = _time(data, "last_snapshot_at", required=False)
    return position


def om_exposure(data: dict) -> dict:
    """order-manager's PortfolioExposure: total_exposure_usdt Decimal, calculated_at datetime."""
    return {"total_exposure_usdt": _decimal(data, "total_exposure_usdt"),
            "calculated_at": _time(data, "calculated_at", required=True)}


def ms_position_size(data: dict | None) -> float | None:
    """model-service's get_position_size: abs(float(size)); None for no position."""
    return None if not data or data.get("size") is None else abs(float(data["size"]))


def ms_unrealized_pnl_pct(data: dict | None) -> float | None:
    return None if not data or data.get("unrealized_pnl_pct") is None else float(data["unrealized_pnl_pct"])


def ms_position_size_norm(data: dict | None) -> float | None:
    return None if not data or data.get("position_size_norm") is None else float(data["position_size_norm"])


def ms_position_update(event: dict) -> dict:
    """model-service's position_updated consumer: the fields it extracts (None dropped) and the
    entry price it tracks (avg_price or average_price, else its placeholder 1.0)."""
    data = {"asset": event.get("asset") or event.get("symbol") or event.get("trading_pair"),
            "size": event.get("size") or event.get("position_size"),
            "unrealized_pnl": event.get("unrealized_pnl"), "unrealized_pnl_pct": event.get("unrealized_pnl_pct"),
            "realized_pnl": event.get("realized_pnl"),
            "avg_price": event.get("avg_price") or event.get("average_price"),
            "mode": event.get("mode", "one-way"), "time_held_minutes": event.get("time_held_minutes"),
            "position_size_norm": event.get("position_size_norm")}
    data = {k: v for k, v in data.items() if v is not None}
    if data.get("size") is not None:
        float(data["size"])
    data["entry_price"] = float(data["avg_price"]) if data.get("avg_price") else 1.0
    return data
