"""Message bodies as the real producers send them (the order and position shapes of
docs/contract.md); `fold` is the reference fold of one-way executions (bench/reference.py)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from bench.reference import fold_fills as fold  # noqa: F401  (the tests call m.fold)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ms(seconds: float) -> str:
    return str(int((T0 + timedelta(seconds=seconds)).timestamp() * 1000))


def execution(asset: str, side: str, qty, price, fee="0", at: float = 0, exec_id: str | None = None,
              **extra) -> dict:
    """Shape A: one execution."""
    return {"event_id": str(uuid.uuid4()), "event_type": "order_executed",
            "execution_id": exec_id or f"exec-{uuid.uuid4().hex[:12]}", "order_id": f"ord-{uuid.uuid4().hex[:8]}",
            "asset": asset, "side": side, "execution_quantity": str(qty), "execution_price": str(price),
            "execution_fees": str(fee), "executed_at": iso(at), "trace_id": f"trace-{uuid.uuid4().hex[:8]}", **extra}


def order_event(order_id: str, asset: str, side: str, qty, filled, avg, fees, event_type: str, at: float = 0,
                **order_extra) -> dict:
    """Shape B: order-manager's order event with cumulative figures."""
    return {"event_id": str(uuid.uuid4()), "event_type": event_type, "timestamp": iso(at),
            "trace_id": f"trace-{uuid.uuid4().hex[:8]}", "source": "order-manager",
            "order": {"id": str(uuid.uuid4()), "order_id": order_id, "signal_id": str(uuid.uuid4()),
                      "asset": asset, "side": side, "order_type": "Market", "quantity": str(qty),
                      "price": None, "status": event_type, "filled_quantity": str(filled),
                      "average_price": None if avg is None else str(avg), "fees": str(fees),
                      "created_at": iso(at - 1), "updated_at": iso(at), "executed_at": iso(at),
                      "trace_id": None, "is_dry_run": False, **order_extra}}


def bybit_execution(symbol: str, side: str, qty, price, fee="0", at: float = 0, exec_type="Trade", seq=1,
                    exec_id: str | None = None) -> dict:
    """Shape C: one element of Bybit's execution topic."""
    return {"category": "linear", "symbol": symbol, "execId": exec_id or str(uuid.uuid4()),
            "orderId": str(uuid.uuid4()), "side": side, "execQty": str(qty), "execPrice": str(price),
            "execFee": str(fee), "execTime": ms(at), "execType": exec_type, "seq": seq,
            "isMaker": False, "orderType": "Market", "positionIdx": 0}


def ws_position(symbol: str, size, side: str, mark, avg=None, at: float = 0, idx: int = 0, seq: int = 1) -> dict:
    """Position shape A: ws-gateway's envelope around Bybit's position record."""
    raw = {"positionIdx": idx, "symbol": symbol, "side": side, "size": str(size),
           "entryPrice": str(avg) if avg is not None else "0", "markPrice": str(mark),
           "unrealisedPnl": "0", "cumRealisedPnl": "0", "updatedTime": ms(at), "seq": seq,
           "positionStatus": "Normal", "leverage": "10"}
    return {"event_id": str(uuid.uuid4()), "event_type": "position", "topic": "position",
            "timestamp": iso(at), "received_at": iso(at + 0.01), "trace_id": f"trace-{uuid.uuid4().hex[:8]}",
            "payload": {"symbol": symbol, "size": str(size), "side": side, "avg_price": None,
                        "unrealised_pnl": "0", "realised_pnl": "0", "mode": idx, "timestamp": iso(at), "raw": raw}}
