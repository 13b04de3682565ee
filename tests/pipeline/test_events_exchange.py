"""The events exchange: every event on a durable topic exchange (routing key = event type), our
three queues bound to it, any other subscriber with a queue of its own getting every event; the
queues nobody in the trading stack reads bounded, also when they exist from before with other
arguments; position_updated with avg_price and the operator metadata."""
from __future__ import annotations

import json

import pika
import pika.exceptions
import pytest

from tests.pipeline import messages as m
from tests.pipeline.conftest import Pipeline, wait_for


def apply(pipe, body: dict) -> None:
    pipe.db.execute("SELECT pm.apply_order_event(%s::jsonb)", (json.dumps(body),))


def snapshot(pipe, asset: str = "BTCUSDT") -> None:
    pipe.db.execute("SELECT pm.snapshot_position(%s, 'one-way', 'trace-snap')", (asset,))


def passive(pipe, queue: str):
    return pipe.mq.channel().queue_declare(queue, passive=True).method


def declares_with(pipe, queue: str, arguments) -> bool:
    """Whether a declaration with exactly these arguments is accepted (the queue has them)."""
    try:
        pipe.mq.channel().queue_declare(queue, durable=True, arguments=arguments)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 406
        return False


def relay_log(pipe, proc, message: str) -> list[dict]:
    return [r for r in pipe.log_records(proc) if r.get("message") == message]


def test_every_subscriber_gets_every_event(pipe):
    exchange = pipe.settings.events_exchange
    # model-service declares its queue before we ever run: durable, no arguments
    pipe.mq.channel().queue_declare(pipe.settings.position_updated_queue, durable=True)
    apply(pipe, m.execution("BTCUSDT", "Buy", "1", "100", at=1))
    snapshot(pipe)
    proc = pipe.start("relay")
    wait_for(lambda: relay_log(pipe, proc, "relay connected"), what="the relay's declarations")
    # ... and published what was there before (a queue bound later gets only later events)
    wait_for(lambda: pipe.one("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL") == 0,
             what="the backlog published")
    # a new service (a risk service, a UI) binds its own queue: every event type, or just one
    channel = pipe.mq.channel()
    everything = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(everything, exchange, routing_key="#")
    updates_only = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(updates_only, exchange, routing_key="position_updated")
    apply(pipe, m.execution("ETHUSDT", "Sell", "2", "3000", at=2))
    snapshot(pipe, "ETHUSDT")

    def drain(queue):
        got = []
        while (msg := channel.basic_get(queue, auto_ack=True))[0] is not None:
            got.append(msg)
        return got

    seen: dict[str, list] = {"everything": [], "updates": []}
    wait_for(lambda: seen["everything"].extend(drain(everything)) or {
        method.routing_key for method, _, _ in seen["everything"]} == {
        "position_updated", "position_snapshot_created", "portfolio_updated"}, what="all three event types")
    seen["updates"] = drain(updates_only)
    for method, props, body in seen["everything"]:
        event = json.loads(body)
        assert method.exchange == exchange and method.routing_key == event["event_type"]
        assert props.delivery_mode == 2 and props.message_id == event["event_id"]
    assert [json.loads(b)["asset"] for _, _, b in seen["updates"]] == ["ETHUSDT"]
    assert {json.loads(b)["event_type"] for _, _, b in seen["updates"]} == {"position_updated"}
    # today's consumers keep their queues: both updates in position_updated, the rest in theirs
    assert [b["asset"] for _, b in pipe.events(expect=2)] == ["BTCUSDT", "ETHUSDT"]
    assert len(pipe.events(pipe.settings.snapshot_created_queue, expect=2)) == 2
    assert pipe.events(pipe.settings.portfolio_updated_queue, expect=1)
    # position_updated is still exactly as model-service declares it; the other two are bounded
    assert declares_with(pipe, pipe.settings.position_updated_queue, None)
    assert declares_with(pipe, pipe.settings.snapshot_created_queue, {
        "x-max-length": 10000, "x-message-ttl": 86400000, "x-overflow": "drop-head"})


def test_position_updated_carries_avg_price_and_metadata(pipe):
    apply(pipe, m.execution("BTCUSDT", "Buy", "2", "100", at=1))
    pipe.db.execute("SELECT pm.update_position_meta('BTCUSDT', 'one-way', %s::jsonb, NULL, 't', 'test')",
                    (json.dumps({"stop_loss": "90", "take_profit": "130.5", "strategy": "trend", "notes": "n"}),))
    apply(pipe, m.execution("BTCUSDT", "Buy", "2", "110", at=2))
    pipe.start("relay")
    events = [body for _, body in pipe.events(expect=3)]
    assert [e["version"] for e in events] == [1, 2, 3]
    assert [(e["avg_price"], e["average_entry_price"]) for e in events] == [("100", "100"), ("100", "100"), ("105", "105")]
    # the metadata as they are when the event goes out (all three left after the PATCH)
    for e in events:
        assert (e["stop_loss"], e["take_profit"], e["strategy"], e["notes"]) == ("90", "130.5", "trend", "n")


@pytest.fixture
def small(settings, mq_vhost, tmp_path):
    """A pipeline whose unread event queues are bounded at 3 messages."""
    p = Pipeline(settings, mq_vhost, tmp_path)
    p.env["POSITION_MANAGER_EVENT_QUEUE_MAX_LENGTH"] = "3"
    p.settings = p.settings.with_overrides(event_queue_max_length=3)
    yield p
    p.close()


def test_unread_queues_keep_only_the_newest(small):
    apply(small, m.execution("BTCUSDT", "Buy", "1", "100", at=1))
    for _ in range(6):
        snapshot(small)
    small.start("relay")
    wait_for(lambda: small.one("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL") == 0,
             what="every event published")
    kept = small.events(small.settings.snapshot_created_queue)
    assert len(kept) == 3
    newest = [str(r[0]) for r in small.db.execute(
        "SELECT event_id FROM pm.outbox WHERE event_type = 'position_snapshot_created' ORDER BY id DESC LIMIT 3")]
    assert sorted(p.message_id for p, _ in kept) == sorted(newest)


def test_unbounded_queue_from_before_without_reader_is_replaced(small):
    queue = small.settings.portfolio_updated_queue
    channel = small.mq.channel()
    channel.queue_declare(queue, durable=True)          # as the earlier service declared it
    for i in range(5):
        channel.basic_publish("", queue, json.dumps({"old": i}).encode())
    wait_for(lambda: passive(small, queue).message_count == 5, what="the old messages")
    apply(small, m.execution("BTCUSDT", "Buy", "1", "100", at=1))
    proc = small.start("relay")
    wait_for(lambda: relay_log(small, proc, "relay connected"), what="the relay's declarations")
    replaced = relay_log(small, proc, "event queue without a reader replaced by a bounded one")
    assert [(r["queue"], r["messages_dropped"]) for r in replaced] == [(queue, 5)]
    assert declares_with(small, queue, {"x-max-length": 3, "x-message-ttl": 86400000, "x-overflow": "drop-head"})
    assert [b["event_type"] for _, b in small.events(queue, expect=1)] == ["portfolio_updated"]
    # a second start finds it as it wants it: nothing replaced again
    small.stop(proc)
    again = small.start("relay")
    wait_for(lambda: relay_log(small, again, "relay connected"), what="the second relay's declarations")
    assert relay_log(small, again, "event queue without a reader replaced by a bounded one") == []


def test_unbounded_queue_from_before_with_a_reader_is_left_as_it_is(small):
    queue = small.settings.snapshot_created_queue
    reader = small.connection()
    try:
        channel = reader.channel()
        channel.queue_declare(queue, durable=True)
        channel.basic_consume(queue, lambda ch, method, props, body: ch.basic_ack(method.delivery_tag))
        apply(small, m.execution("BTCUSDT", "Buy", "1", "100", at=1))
        snapshot(small)
        proc = small.start("relay")
        wait_for(lambda: relay_log(small, proc, "relay connected"), what="the relay's declarations")
        left = relay_log(small, proc, "event queue exists with other arguments and has consumers: left as it is, "
                                      "unbounded unless its own arguments bound it")
        assert [(r["queue"], r["consumers"]) for r in left] == [(queue, 1)]
        # the relay publishes to it all the same, and its reader gets the event
        wait_for(lambda: small.one("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL") == 0,
                 what="every event published")
        reader.process_data_events(time_limit=0.5)
        assert passive(small, queue).message_count == 0
        assert declares_with(small, queue, None)    # still as its owner declared it
        assert proc.poll() is None
    finally:
        reader.close()
