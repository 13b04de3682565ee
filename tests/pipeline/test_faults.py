"""Bad messages, a crash between commit and ack, a relay crash between publish and
mark, unknown failures, two consumers on one queue, clean SIGTERM."""
from __future__ import annotations

import json
import random
import signal
from decimal import Decimal

from tests.pipeline import messages as m
from tests.pipeline.conftest import wait_for


def D(x) -> Decimal | None:
    return None if x is None else Decimal(x)


def processed(pipe, proc=None) -> list[dict]:
    return [r for r in pipe.log_records(proc) if r.get("message") == "message processed"]


def test_poison_messages_are_dead_lettered_and_neighbours_applied(pipe):
    q, dlq = pipe.settings.order_queue, pipe.settings.dead_letter_queue
    good = [m.execution("BTCUSDT", "Buy", "1", "100", "0", at=i) for i in range(6)]
    missing = m.execution("BTCUSDT", "Buy", "1", "100", at=10)
    del missing["execution_price"]
    poison = {
        "invalid_json": b'{"event_type": "order_executed", "asset": ',
        "invalid_utf8": b'{"asset": "\xc3\x28"}',
        "nan_literal": b'{"event_type": "order_executed", "execution_quantity": NaN}',
        "missing_field": json.dumps(missing).encode(),
        "zero_quantity": json.dumps(m.execution("BTCUSDT", "Buy", "0", "100", at=11)).encode(),
        "negative_price": json.dumps(m.execution("BTCUSDT", "Buy", "1", "-5", at=12)).encode(),
        "nan_string": json.dumps(m.execution("BTCUSDT", "Buy", "NaN", "100", at=13)).encode(),
        "infinity": json.dumps(m.execution("BTCUSDT", "Buy", "1", "Infinity", at=14)).encode(),
        "unknown_symbol": json.dumps(m.execution("BTC/USDT perp!", "Buy", "1", "100", at=15)).encode(),
        "hedge_below_zero": json.dumps(m.execution("ETHUSDT", "Sell", "5", "100", at=16, mode="hedge",
                                                   position_idx=1)).encode(),
        "not_an_event": b'{"hello": "world"}',
    }
    bodies = [json.dumps(g).encode() for g in good]
    mixed = []
    for i, (name, body) in enumerate(poison.items()):
        mixed.append((f"poison-{name}", body))
        mixed.append((f"good-{i}", bodies[i % len(bodies)]))
    for message_id, body in mixed:   # good ones repeat: duplicates among them, harmless
        pipe.publish(q, body, message_id=message_id, headers={"origin": "test"})
    pipe.start("order")

    dead = []
    wait_for(lambda: dead.extend(pipe.drain(dlq)) or len(dead) >= len(poison), what="every poison message in the DLQ")
    assert sorted(p.message_id for p, _ in dead) == sorted(f"poison-{n}" for n in poison)
    for props, body in dead:
        name = props.message_id.removeprefix("poison-")
        assert body == poison[name]
        assert props.headers["x-source-queue"] == q
        assert props.headers["x-death-reason"]
        assert props.headers["x-error-code"]
        assert props.headers["origin"] == "test"       # the original headers travel along
        assert props.delivery_mode == 2
    reasons = {p.message_id.removeprefix("poison-"): p.headers for p, _ in dead}
    assert reasons["invalid_json"]["x-error-code"] == "invalid_json"
    assert reasons["invalid_utf8"]["x-error-code"] == "invalid_utf8"
    assert reasons["nan_literal"]["x-error-code"] == "invalid_json"
    assert "execution_price" in reasons["missing_field"]["x-death-reason"]
    assert "execution_quantity" in reasons["zero_quantity"]["x-death-reason"]
    assert "execution_price" in reasons["negative_price"]["x-death-reason"]
    assert "asset" in reasons["unknown_symbol"]["x-death-reason"]
    assert "below zero" in reasons["hedge_below_zero"]["x-death-reason"]
    for name in ("missing_field", "zero_quantity", "nan_string", "infinity", "unknown_symbol", "hedge_below_zero"):
        assert reasons[name]["x-error-code"].startswith("22"), name

    wait_for(lambda: pipe.depth(q) == 0, what="the source queue acknowledged")
    # (recorded after the dead-letter queue confirmed them; depth counts ready messages only)
    wait_for(lambda: pipe.one("SELECT count(*) FROM pm.dead_letters WHERE queue = %s", q) == len(poison),
             what="every dead letter recorded")
    assert pipe.one("SELECT count(*) FROM pm.dead_letters WHERE message_id = 'poison-hedge_below_zero' "
                    "AND error_code = '22023' AND reason LIKE '%%below zero%%'") == 1
    # every good message applied once; the failed hedge sell left nothing behind
    assert D(pipe.position("BTCUSDT")["size"]) == 6
    assert pipe.position("ETHUSDT", "hedge") is None or D(pipe.position("ETHUSDT", "hedge")["size"]) == 0
    # the consumer keeps going
    pipe.publish(q, m.execution("BTCUSDT", "Buy", "1", "100", "0", at=30))
    wait_for(lambda: D(pipe.position("BTCUSDT")["size"]) == 7, what="a later message applied")

    # the position queue too
    pq = pipe.settings.position_queue
    pipe.publish(pq, m.ws_position("BTCUSDT", "abc", "Buy", mark="100", at=5), message_id="poison-position")
    pipe.start("position")
    got = wait_for(lambda: pipe.drain(dlq), what="the position poison in the DLQ")
    assert got[0][0].message_id == "poison-position"
    assert got[0][0].headers["x-source-queue"] == pq
    assert "size" in got[0][0].headers["x-death-reason"]


def test_unknown_failure_is_retried_with_backoff_then_dead_lettered(pipe):
    # a failure that is neither invalid input nor transient: a trigger of this test's database
    pipe.db.execute("""
        CREATE FUNCTION public.fail_boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.exec_key = 'boom' THEN RAISE EXCEPTION 'boom' USING ERRCODE = 'P0001'; END IF;
            RETURN NEW;
        END $$""")
    pipe.db.execute("CREATE TRIGGER fail_boom BEFORE INSERT ON pm.executions FOR EACH ROW EXECUTE FUNCTION public.fail_boom()")
    q, dlq = pipe.settings.order_queue, pipe.settings.dead_letter_queue
    pipe.publish(q, m.execution("BTCUSDT", "Buy", "1", "100", at=1), message_id="before")
    pipe.publish(q, m.execution("BTCUSDT", "Buy", "1", "100", at=2, exec_id="boom"), message_id="boom")
    pipe.publish(q, m.execution("BTCUSDT", "Buy", "1", "100", at=3), message_id="after")
    pipe.start("order", POSITION_MANAGER_MAX_DELIVERY_ATTEMPTS="3")
    dead = wait_for(lambda: pipe.drain(dlq), timeout=30, what="the failing message dead-lettered")
    assert [p.message_id for p, _ in dead] == ["boom"]
    assert dead[0][0].headers["x-error-code"] == "P0001"
    assert "failed 3 times" in dead[0][0].headers["x-death-reason"]
    retries = [r for r in pipe.log_records() if r.get("message") == "message failed for an unknown reason, will retry"]
    assert [r["attempt"] for r in retries] == [1, 2]
    assert retries[1]["retry_in_seconds"] > retries[0]["retry_in_seconds"]   # backoff, not a hot loop
    wait_for(lambda: pipe.depth(q) == 0, what="all acknowledged")
    assert D(pipe.position("BTCUSDT")["size"]) == 2


def test_sigkill_after_commit_before_ack_redelivery_has_no_second_effect(pipe):
    q = pipe.settings.order_queue
    bodies = [m.execution("SOLUSDT", "Buy", "1", str(100 + i), "0.01", at=i) for i in range(5)]
    for body in bodies:
        pipe.publish(q, body)
    first = pipe.start("order", PM_TEST_KILL_AFTER_COMMITS="1")
    assert first.wait(timeout=30) == -signal.SIGKILL
    committed = pipe.ledger_count()
    assert committed >= 1
    assert pipe.depth(q) == 5   # committed but never acknowledged: all back in the queue
    version_before = pipe.position("SOLUSDT")["version"]
    events_before = pipe.one("SELECT count(*) FROM pm.outbox WHERE event_type = 'position_updated'")

    second = pipe.start("order")
    wait_for(lambda: pipe.depth(q) == 0 and len(processed(pipe, second)) == 5, what="redelivery processed")
    assert pipe.ledger_count() == 5
    pos = pipe.position("SOLUSDT")
    assert D(pos["size"]) == 5
    # one version bump and one position_updated per batch that changed the position (pm.apply_batch
    # writes a position once per batch); the redelivered, committed ones added none
    events = pipe.one("SELECT count(*) FROM pm.outbox WHERE event_type = 'position_updated'")
    assert events == pos["version"]
    if committed == 5:
        assert (pos["version"], events) == (version_before, events_before)
    redelivered = [r for r in processed(pipe, second) if r["redelivered"]]
    assert len(redelivered) == 5
    assert sum(r["status"] == "duplicate" for r in redelivered) == committed


def test_relay_killed_between_publish_and_mark_publishes_again(pipe):
    pipe.db.execute("SELECT pm.apply_order_event(%s::jsonb)", (json.dumps(m.execution("BTCUSDT", "Buy", "1", "100", at=1)),))
    event_id = pipe.one("SELECT event_id::text FROM pm.outbox WHERE event_type = 'position_updated'")
    first = pipe.start("relay", PM_TEST_RELAY_KILL_AFTER_PUBLISH="1")
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert pipe.one("SELECT published_at FROM pm.outbox WHERE event_id = %s::uuid", event_id) is None
    pipe.start("relay")
    wait_for(lambda: pipe.one("SELECT published_at IS NOT NULL FROM pm.outbox WHERE event_id = %s::uuid", event_id),
             what="the event marked published")
    events = pipe.events(expect=2)
    assert [p.message_id for p, _ in events] == [event_id, event_id]   # a duplicate, never a loss


def test_two_consumers_on_one_queue(pipe):
    q = pipe.settings.order_queue
    rng = random.Random(7)
    assets = [f"X{i}USDT" for i in range(10)]
    fills: dict[str, list] = {a: [] for a in assets}
    bodies = []
    for i in range(1500):
        asset = rng.choice(assets)
        fill = (rng.choice(["Buy", "Sell"]), str(Decimal(rng.randint(1, 500)) / 100), str(rng.randint(90, 110)), "0.01")
        fills[asset].append(fill)
        bodies.append(m.execution(asset, *fill, at=i, exec_id=f"two-{i}"))
    pipe.publish_many(q, bodies)
    env = {"POSITION_MANAGER_CONSUMER_BATCH_SIZE": "50", "POSITION_MANAGER_CONSUMER_PREFETCH": "100"}
    one, two = pipe.start("order", **env), pipe.start("order", **env)
    wait_for(lambda: pipe.ledger_count() == 1500 and pipe.depth(q) == 0, timeout=120, what="1500 executions")
    for asset in assets:
        pos = pipe.position(asset)
        assert (D(pos["size"]), D(pos["average_entry_price"]), D(pos["realized_pnl"])) == m.fold(fills[asset]), asset
    assert pipe.depth(pipe.settings.dead_letter_queue) == 0
    assert processed(pipe, one) and processed(pipe, two)   # both took part


def test_sigterm_finishes_the_batch_and_exits_cleanly(pipe):
    q = pipe.settings.order_queue
    proc = pipe.start("order")
    wait_for(lambda: any(r.get("message") == "consuming" for r in pipe.log_records(proc)), what="consuming")
    pipe.publish_many(q, [m.execution("BTCUSDT", "Buy", "1", "100", at=i) for i in range(300)])
    wait_for(lambda: pipe.ledger_count() > 0, what="a first commit")
    assert pipe.stop(proc) == 0
    applied = pipe.ledger_count()
    # whatever was committed was acknowledged, nothing else: ledger + queue = everything published
    assert applied + pipe.depth(q) == 300
    assert any(r.get("message") == "stopped" for r in pipe.log_records(proc))
