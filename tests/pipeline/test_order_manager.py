"""order-manager's real traffic through the real order consumer: its order events exactly as it
builds and publishes them (tests/ytrader.py: transient, no message_id, naive times, SELL, null
fees and averages), every one delivered twice. Every fill counts once, whatever the event type;
nothing is dead-lettered."""
from __future__ import annotations

from decimal import Decimal as D

from tests.pipeline.conftest import wait_for
from tests.ytrader import OrderManagerOrder, publish_order_event


def processed(pipe) -> list[dict]:
    return [r for r in pipe.log_records() if r.get("message") == "message processed"]


def test_order_manager_sequences_each_delivered_twice(pipe):
    q = pipe.settings.order_queue
    # the defect this guards: 0.5 filled after the last partially_filled event, told only by `cancelled`
    btc = OrderManagerOrder("BTCUSDT", "Buy", "2", "100")
    btc_events = [btc.update("PartiallyFilled", "1", "100", at=1)]
    assert btc.update("PartiallyFilled", "1.5", "100.2", at=2) is None
    btc_events.append(btc.update("Cancelled", "1.5", "100.2", at=3))
    # partial -> partial -> cancelled, a SELL with fees
    eth = OrderManagerOrder("ETHUSDT", "SELL", "3", "2000")
    eth_events = [eth.update("PartiallyFilled", "1", "2000", "0.4", at=1)]
    eth.update("PartiallyFilled", "2", "2001", "0.8", at=2)
    eth_events += [eth.event("partially_filled", at=2), eth.update("Cancelled", "2.5", "2002", "1", at=3)]
    # partial -> filled, null fees, executed_at only on the filled event
    sol = OrderManagerOrder("SOLUSDT", "Buy", "10", "150")
    sol_events = [sol.update("PartiallyFilled", "4", "150", at=1), sol.update("Filled", "10", "150.6", at=2)]
    # rejected with nothing filled; a fill reported before its average price; a dry run
    rejected = OrderManagerOrder("XRPUSDT", "Buy", "100", "0.5").update("Rejected", "0", at=1)
    ada = OrderManagerOrder("ADAUSDT", "SELL", "50", "0.4")
    ada_events = [ada.update("PartiallyFilled", "20", None, at=1), ada.update("Filled", "50", "0.41", "0.02", at=2)]
    dry = OrderManagerOrder("DOGEUSDT", "Buy", "10", "0.1", dry_run=True).update("Filled", "10", "0.1", at=1)
    assert sol_events[0]["order"]["executed_at"] is None and sol_events[1]["order"]["executed_at"]
    assert "Z" not in sol_events[1]["timestamp"] and sol_events[0]["order"]["fees"] is None

    bodies = btc_events + eth_events + sol_events + [rejected] + ada_events + [dry]
    pipe.declare(q)
    channel = pipe.mq.channel()
    for body in bodies + bodies:          # every message twice: a producer retry, a redelivery
        publish_order_event(channel, q, body)
    channel.close()
    pipe.start("order")
    pipe.start("relay")
    wait_for(lambda: pipe.depth(q) == 0 and len(processed(pipe)) == 2 * len(bodies),
             what="every delivery processed")

    def state(asset):
        p = pipe.position(asset)
        return D(p["size"]), D(p["average_entry_price"]), D(p["realized_pnl"]), p["version"]

    assert state("BTCUSDT") == (D("1.5"), D("100.2"), 0, 2)
    assert state("ETHUSDT") == (D("-2.5"), 2002, -1, 3)
    assert state("SOLUSDT") == (10, D("150.6"), 0, 2)
    assert state("ADAUSDT") == (-50, D("0.41"), D("-0.02"), 1)   # the unpriced partial waited for the filled
    assert pipe.position("XRPUSDT") is None and pipe.position("DOGEUSDT") is None
    assert pipe.ledger_count() == 2 + 3 + 2 + 1

    logged = processed(pipe)
    by_event: dict[str, list[str]] = {}
    for r in logged:
        by_event.setdefault(r["event_id"], []).append(r["status"])
    assert sorted(by_event[btc_events[1]["event_id"]]) == ["applied", "duplicate"]
    assert by_event[rejected["event_id"]] == ["ignored", "ignored"]
    assert by_event[ada_events[0]["event_id"]] == ["ignored", "ignored"]
    assert by_event[dry["event_id"]] == ["ignored", "ignored"]
    unpriced = next(r for r in logged if r["event_id"] == ada_events[0]["event_id"])
    assert "without average_price" in unpriced["reason"]
    # the trace id came from the body (order-manager also sends it as a header)
    assert {r["trace_id"] for r in logged if r["event_id"] == sol_events[1]["event_id"]} == {sol.trace_id}
    assert pipe.one("SELECT value FROM pm.counters WHERE name = 'order_events_without_price'") == 2
    assert pipe.depth(pipe.settings.dead_letter_queue) == 0
    assert pipe.one("SELECT count(*) FROM pm.dead_letters") == 0
    # one position_updated per change: 2 BTC + 3 ETH + 2 SOL + 1 ADA
    assert len(pipe.events(expect=8)) == 8
