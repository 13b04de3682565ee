"""Every message shape of the order and position queues, published as the real producers do, through the
real consumer and relay processes: the right position, one position_updated per change."""
from __future__ import annotations

import random
from decimal import Decimal

from tests.pipeline import messages as m
from tests.pipeline.conftest import wait_for

POSITION_FIELDS = {
    "id", "asset", "mode", "side", "size", "long_size", "short_size", "average_entry_price", "long_avg_price",
    "short_avg_price", "current_price", "price_updated_at", "unrealized_pnl", "realized_pnl", "unrealized_pnl_pct",
    "time_held_minutes", "position_size_norm", "exposure_usdt", "version", "created_at", "last_updated",
    "closed_at", "last_snapshot_at"}
EVENT_FIELDS = {"event_id", "event_type", "asset", "mode", "version", "update_source", "trace_id", "timestamp"}


def D(x) -> Decimal | None:
    return None if x is None else Decimal(x)


def check_event(props, body, source: str, trace_id: str | None = None) -> None:
    assert EVENT_FIELDS | POSITION_FIELDS <= set(body), sorted((EVENT_FIELDS | POSITION_FIELDS) - set(body))
    assert body["event_type"] == "position_updated"
    assert body["update_source"] == source
    assert props.message_id == body["event_id"]
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    if trace_id is not None:
        assert body["trace_id"] == trace_id
        assert props.headers["trace_id"] == trace_id


def test_order_event_shapes(pipe):
    q = pipe.settings.order_queue
    a = m.execution("BTCUSDT", "Buy", "0.5", "50000", "0.1", at=1)
    a_hedge = m.execution("ETHUSDT", "Buy", "2", "3000", "0.2", at=1, mode="hedge", position_idx=1)
    b_partial = m.order_event("ord-sol-1", "SOLUSDT", "Buy", "10", "4", "100", "0.04", "partially_filled", at=2)
    b_full = m.order_event("ord-sol-1", "SOLUSDT", "Buy", "10", "10", "101.2", "0.1", "filled", at=3)
    b_sell_caps = m.order_event("ord-xrp-1", "XRPUSDT", "SELL", "100", "100", "0.5", "0.01", "filled", at=2)
    b_cancelled = m.order_event("ord-xrp-2", "XRPUSDT", "Buy", "5", "0", None, "0", "cancelled", at=3)
    b_dry_run = m.order_event("ord-xrp-3", "XRPUSDT", "Buy", "5", "5", "0.6", "0", "filled", at=4, is_dry_run=True)
    c_topic = {"id": "bybit-msg-1", "topic": "execution", "creationTime": int(m.ms(5)),
               "data": [m.bybit_execution("DOGEUSDT", "Buy", "1000", "0.1", "0.05", at=5, seq=10),
                        m.bybit_execution("DOGEUSDT", "Buy", "0", "0.1", "0.3", at=6, exec_type="Funding", seq=11)]}
    c_record = m.bybit_execution("ADAUSDT", "Sell", "10", "0.4", "0.001", at=5)
    for body in (a, a_hedge, b_partial, b_full, b_sell_caps, b_cancelled, b_dry_run, c_topic, c_record):
        pipe.publish(q, body)
    pipe.start("order")
    pipe.start("relay")

    wait_for(lambda: pipe.depth(q) == 0 and pipe.ledger_count() == 7, what="7 executions applied")
    btc = pipe.position("BTCUSDT")
    assert (D(btc["size"]), D(btc["average_entry_price"]), D(btc["realized_pnl"])) == (Decimal("0.5"), 50000, Decimal("-0.1"))
    eth = pipe.position("ETHUSDT", "hedge")
    assert (D(eth["long_size"]), D(eth["long_avg_price"]), D(eth["short_size"])) == (2, 3000, 0)
    sol = pipe.position("SOLUSDT")   # 4 @ 100, then the difference 6 @ 102
    assert (D(sol["size"]), D(sol["average_entry_price"]), D(sol["realized_pnl"])) == (10, Decimal("101.2"), Decimal("-0.1"))
    assert pipe.one("SELECT array_agg(qty ORDER BY qty) FROM pm.executions WHERE order_id = 'ord-sol-1'") == [4, 6]
    xrp = pipe.position("XRPUSDT")
    assert (D(xrp["size"]), D(xrp["average_entry_price"]), xrp["version"]) == (-100, Decimal("0.5"), 1)
    doge = pipe.position("DOGEUSDT")
    assert (D(doge["size"]), D(doge["realized_pnl"])) == (1000, Decimal("-0.35"))
    ada = pipe.position("ADAUSDT")
    assert (D(ada["size"]), D(ada["average_entry_price"])) == (-10, Decimal("0.4"))

    events = pipe.events(expect=8)   # 7 trades and the funding payment
    assert len(events) == 8
    by_asset: dict[str, list] = {}
    for props, body in events:
        check_event(props, body, "order_execution")
        by_asset.setdefault(body["asset"], []).append(body)
    assert {k: len(v) for k, v in by_asset.items()} == {
        "BTCUSDT": 1, "ETHUSDT": 1, "SOLUSDT": 2, "XRPUSDT": 1, "DOGEUSDT": 2, "ADAUSDT": 1}
    assert by_asset["BTCUSDT"][0]["trace_id"] == a["trace_id"]
    assert by_asset["BTCUSDT"][0]["size"] == "0.5" and by_asset["BTCUSDT"][0]["version"] == 1
    assert [e["version"] for e in by_asset["SOLUSDT"]] == [1, 2]
    assert by_asset["SOLUSDT"][1]["trace_id"] == b_full["trace_id"]
    assert by_asset["ETHUSDT"][0]["mode"] == "hedge"
    # the trace id travels in the header too
    props = next(p for p, b in events if b["asset"] == "BTCUSDT")
    assert props.headers["trace_id"] == a["trace_id"]
    # nothing was dead-lettered, and the logs carry one line per message with status and version
    assert pipe.depth(pipe.settings.dead_letter_queue) == 0
    logged = [r for r in pipe.log_records() if r.get("message") == "message processed"]
    assert len(logged) == 9
    btc_log = next(r for r in logged if r["event_id"] == a["event_id"])
    assert (btc_log["status"], btc_log["position_version"], btc_log["trace_id"], btc_log["queue"]) == (
        "applied", 1, a["trace_id"], q)
    assert {r["status"] for r in logged if r["event_id"] in (b_cancelled["event_id"], b_dry_run["event_id"])} == {"ignored"}
    # a portfolio_updated event follows the changes (coalesced)
    portfolio = pipe.events(pipe.settings.portfolio_updated_queue, expect=1)
    assert portfolio[0][1]["event_type"] == "portfolio_updated"


def test_position_event_shapes(pipe):
    q_order, q_pos = pipe.settings.order_queue, pipe.settings.position_queue
    pipe.publish(q_order, m.execution("BTCUSDT", "Buy", "1", "50000", "0", at=1))
    ws_new = m.ws_position("BNBUSDT", "2", "Buy", mark="600", avg="590", at=2)
    ws_price = m.ws_position("BTCUSDT", "1", "Buy", mark="51000", avg="50000", at=3)
    flat = {"event_type": "position", "payload": {"symbol": "LTCUSDT", "mode": "one-way", "size": "-3",
                                                  "avgPrice": "80", "markPrice": "81", "unrealisedPnl": "-3",
                                                  "realisedPnl": "0", "timestamp": m.iso(2)}}
    raw = {"id": "bybit-pos-1", "topic": "position", "creationTime": int(m.ms(2)),
           "data": [{"positionIdx": 0, "symbol": "LINKUSDT", "side": "Sell", "size": "5", "entryPrice": "15",
                     "markPrice": "15.5", "unrealisedPnl": "-2.5", "cumRealisedPnl": "0",
                     "updatedTime": m.ms(2), "seq": 7}]}
    ws_hedge = m.ws_position("AVAXUSDT", "3", "Buy", mark="30", avg="29", at=2, idx=1)
    record = {"positionIdx": 0, "symbol": "DOTUSDT", "side": "Buy", "size": "7", "avgPrice": "6",
              "markPrice": "6.1", "unrealisedPnl": "0.7", "cumRealisedPnl": "0", "updatedTime": m.ms(2), "seq": 3}
    pipe.start("order")
    pipe.start("relay")
    wait_for(lambda: pipe.position("BTCUSDT"), what="the BTC fill")
    for body in (ws_new, ws_price, flat, raw, ws_hedge, record):
        pipe.publish(q_pos, body)
    pipe.start("position")

    wait_for(lambda: pipe.depth(q_pos) == 0 and pipe.one("SELECT count(*) FROM pm.outbox WHERE source = 'exchange' "
                                                         "AND event_type = 'position_updated'") == 6,
             what="6 exchange changes")
    avax = pipe.position("AVAXUSDT", "hedge")
    assert (D(avax["long_size"]), D(avax["long_avg_price"]), D(avax["short_size"])) == (3, 29, 0)
    dot = pipe.position("DOTUSDT")
    assert (D(dot["size"]), D(dot["average_entry_price"]), D(dot["current_price"])) == (7, 6, Decimal("6.1"))
    bnb = pipe.position("BNBUSDT")
    assert (D(bnb["size"]), D(bnb["current_price"]), D(bnb["average_entry_price"])) == (2, 600, 590)
    btc = pipe.position("BTCUSDT")
    assert (D(btc["size"]), D(btc["current_price"]), btc["version"]) == (1, 51000, 2)
    assert D(btc["unrealized_pnl"]) == 0 or D(btc["unrealized_pnl"]) == 1000  # the event's value, or recomputed
    ltc = pipe.position("LTCUSDT")
    assert (D(ltc["size"]), D(ltc["current_price"])) == (-3, 81)
    link = pipe.position("LINKUSDT")
    assert (D(link["size"]), D(link["current_price"]), D(link["average_entry_price"])) == (-5, Decimal("15.5"), 15)

    events = pipe.events(expect=7)
    assert len(events) == 7
    sources = {}
    for props, body in events:
        check_event(props, body, "order_execution" if body["version"] == 1 and body["asset"] == "BTCUSDT" else "exchange")
        sources.setdefault(body["asset"], []).append(body["version"])
    assert sources == {"BTCUSDT": [1, 2], "BNBUSDT": [1], "LTCUSDT": [1], "LINKUSDT": [1], "AVAXUSDT": [1],
                       "DOTUSDT": [1]}
    bnb_event = next(b for _, b in events if b["asset"] == "BNBUSDT")
    assert bnb_event["trace_id"] == ws_new["trace_id"]

    # the queue exists exactly as ws-gateway declares it: a declaration with its arguments passes
    channel = pipe.mq.channel()
    channel.queue_declare(q_pos, durable=True, arguments={
        "x-message-ttl": 86400000, "x-max-length": 100000, "x-overflow": "drop-head"})
    # the same exchange report again: stale/unchanged, no new event
    pipe.publish(q_pos, ws_new)
    wait_for(lambda: pipe.depth(q_pos) == 0, what="the repeat consumed")
    wait_for(lambda: any(r.get("event_id") == ws_new["event_id"] and r.get("redelivered") is False
                         and r.get("status") != "applied" for r in pipe.log_records()), what="the repeat logged")
    assert pipe.events() == []


def test_same_message_twice_has_one_effect(pipe):
    q = pipe.settings.order_queue
    body = m.execution("BTCUSDT", "Buy", "1", "100", "0.1", at=1)
    pipe.publish(q, body)
    pipe.publish(q, body)
    pipe.start("order")
    pipe.start("relay")
    wait_for(lambda: pipe.depth(q) == 0 and len([r for r in pipe.log_records()
                                                if r.get("message") == "message processed"]) == 2,
             what="both deliveries processed")
    pos = pipe.position("BTCUSDT")
    assert (D(pos["size"]), pos["version"]) == (1, 1)
    statuses = sorted(r["status"] for r in pipe.log_records() if r.get("message") == "message processed")
    assert statuses == ["applied", "duplicate"]
    assert len(pipe.events(expect=1)) == 1


def test_partial_then_full_cumulative_order_events_sum(pipe):
    q = pipe.settings.order_queue
    partial = m.order_event("ord-1", "ETHUSDT", "Sell", "3", "1", "2000", "0.2", "partially_filled", at=1)
    partial_again = dict(partial, event_id="another-delivery")
    full = m.order_event("ord-1", "ETHUSDT", "Sell", "3", "3", "2010", "0.6", "filled", at=2)
    for body in (partial, partial_again, full, full):
        pipe.publish(q, body)
    pipe.start("order")
    wait_for(lambda: pipe.depth(q) == 0 and pipe.ledger_count() == 2, what="two executions")
    pos = pipe.position("ETHUSDT")
    # 1 @ 2000 then 2 @ 2015: size -3 (not -4 or -6), average 2010, fees 0.6 in total
    assert (D(pos["size"]), D(pos["average_entry_price"]), D(pos["realized_pnl"]), pos["version"]) == (
        -3, 2010, Decimal("-0.6"), 2)


def test_out_of_order_delivery_same_final_position(pipe):
    """One asset's executions shuffled, another's in order: the same final position."""
    q = pipe.settings.order_queue
    fills = [("Buy", "1.5", "100", "0.01"), ("Buy", "2", "110", "0.02"), ("Sell", "1", "120", "0.01"),
             ("Sell", "4", "90", "0.03"), ("Buy", "3", "95", "0.02"), ("Buy", "0.5", "97", "0.01")]
    in_order = [m.execution("AAAUSDT", s, qty, p, f, at=i, exec_id=f"a-{i}") for i, (s, qty, p, f) in enumerate(fills)]
    shuffled = [m.execution("BBBUSDT", s, qty, p, f, at=i, exec_id=f"b-{i}") for i, (s, qty, p, f) in enumerate(fills)]
    random.Random(4).shuffle(shuffled)
    assert [b["execution_id"] for b in shuffled] != sorted(b["execution_id"] for b in shuffled)
    for body in in_order + shuffled:
        pipe.publish(q, body)
    pipe.start("order")
    wait_for(lambda: pipe.depth(q) == 0 and pipe.ledger_count() == 12, what="12 executions applied")
    expected = m.fold(fills)
    for asset in ("AAAUSDT", "BBBUSDT"):
        pos = pipe.position(asset)
        assert (D(pos["size"]), D(pos["average_entry_price"]), D(pos["realized_pnl"])) == expected, asset
    assert pipe.depth(pipe.settings.dead_letter_queue) == 0
