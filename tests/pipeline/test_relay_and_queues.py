"""The relay's routing and coalescing; queues that exist with other arguments."""
from __future__ import annotations

import json
import time

import psycopg

from tests.pipeline import messages as m
from tests.pipeline.conftest import wait_for


def apply(pipe, body: dict) -> None:
    pipe.db.execute("SELECT pm.apply_order_event(%s::jsonb)", (json.dumps(body),))


def test_relay_routes_every_event_type(pipe):
    body = m.execution("BTCUSDT", "Buy", "1", "100", at=1)
    apply(pipe, body)
    pipe.db.execute("SELECT pm.snapshot_position('BTCUSDT', 'one-way', 'trace-snap')")
    pipe.start("relay")
    updated = pipe.events(expect=1)
    assert updated[0][1]["trace_id"] == body["trace_id"]
    snapshots = pipe.events(pipe.settings.snapshot_created_queue, expect=1)
    props, snap = snapshots[0]
    assert snap["event_type"] == "position_snapshot_created"
    assert props.message_id == snap["event_id"] and props.headers["trace_id"] == "trace-snap"
    portfolio = pipe.events(pipe.settings.portfolio_updated_queue, expect=1)
    assert portfolio[0][1]["event_type"] == "portfolio_updated"
    assert pipe.one("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL") == 0


def test_portfolio_updated_is_coalesced(pipe):
    pipe.start("relay")    # POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL=0.5 in these tests
    start = time.monotonic()
    for i in range(40):
        apply(pipe, m.execution("ETHUSDT", "Buy", "1", "100", at=i))
        time.sleep(0.05)
    busy = time.monotonic() - start
    updated = pipe.events(expect=40)
    assert len(updated) == 40
    time.sleep(1.0)   # let the last interval pass: the final state must be announced too
    portfolio = pipe.events(pipe.settings.portfolio_updated_queue, expect=1)
    assert 1 <= len(portfolio) <= busy / 0.5 + 2, (len(portfolio), busy)
    last_id = pipe.one("SELECT max(id) FROM pm.outbox WHERE event_type = 'position_updated'")
    assert pipe.one("SELECT last_change_id FROM pm.portfolio_event_state") == last_id


def test_queue_declared_elsewhere_with_other_arguments_is_used_as_it_is(pipe):
    q = pipe.settings.order_queue
    pipe.mq.channel().queue_declare(q, durable=True, arguments={"x-max-length": 5000})
    pipe.mq.channel().basic_publish("", q, json.dumps(m.execution("BTCUSDT", "Buy", "2", "100", at=1)).encode())
    proc = pipe.start("order")
    wait_for(lambda: pipe.position("BTCUSDT"), what="the message applied")
    assert pipe.position("BTCUSDT")["size"] == "2"
    assert any(r.get("message") == "queue exists with other arguments, using it as it is"
               for r in pipe.log_records(proc))
    assert proc.poll() is None


def test_unmigrated_database_is_waited_for_not_dead_lettered(pipe, mq_vhost, tmp_path):
    from psycopg import sql

    from app import settings as settings_mod
    from jobs import migrate
    from tests.pipeline.conftest import Pipeline

    name = f"{pipe.settings.postgres_db}_empty"
    empty = pipe.settings.with_overrides(postgres_db=name)
    with psycopg.connect(**pipe.settings.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    other = Pipeline(empty, mq_vhost, tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    try:
        q = other.settings.order_queue
        other.publish(q, m.execution("BTCUSDT", "Buy", "1", "100", at=1))
        proc = other.start("order")
        wait_for(lambda: any("not migrated" in r.get("message", "") for r in other.log_records(proc)),
                 what="the consumer waiting for migrations")
        assert other.depth(q) == 1 and other.depth(other.settings.dead_letter_queue) == 0
        migrate.apply(settings_mod.load(other.env))
        wait_for(lambda: other.position("BTCUSDT"), timeout=40, what="the message applied after migrating")
        assert other.depth(other.settings.dead_letter_queue) == 0
    finally:
        other.close()
        with psycopg.connect(**pipe.settings.conninfo("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
