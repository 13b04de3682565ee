"""Servers going away: a PRIVATE PostgreSQL stopped while messages arrive, a
PRIVATE RabbitMQ node restarted under the consumer and the relay. The shared servers are never
touched."""
from __future__ import annotations

import json
import shutil

import pytest

from app import settings as settings_mod
from bench.common import PG_BIN, RABBIT_BIN, PrivatePostgres, PrivateRabbit
from jobs import migrate
from tests.conftest import base_environ
from tests.pipeline import messages as m
from tests.pipeline.conftest import Pipeline, queue_counts, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def private_pg():
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN}")
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def private_mq():
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip(f"no RabbitMQ in {RABBIT_BIN}")
    mq = PrivateRabbit()
    try:
        mq.start()
        yield mq
    finally:
        mq.destroy()


def test_database_down_nothing_acked_everything_applied_after_it_returns(private_pg, mq_vhost, tmp_path):
    if not shutil.which("rabbitmqctl"):
        pytest.skip("rabbitmqctl is needed to see unacknowledged messages")
    settings = settings_mod.load(base_environ(POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(private_pg.port),
                                              POSTGRES_DB="pm_private"))
    migrate.ensure_database(settings)
    migrate.apply(settings)
    pipe = Pipeline(settings, mq_vhost, tmp_path)
    try:
        q = pipe.settings.order_queue
        proc = pipe.start("order")
        pipe.publish(q, m.execution("BTCUSDT", "Buy", "1", "100", at=0))
        wait_for(lambda: pipe.ledger_count() == 1, what="the first message applied")
        pipe.db.close()
        private_pg.stop()

        pipe.publish_many(q, [m.execution("BTCUSDT", "Buy", "1", "100", at=i) for i in range(1, 21)])
        # delivered to the consumer, which cannot commit: all held unacknowledged
        wait_for(lambda: queue_counts(mq_vhost, q).get("messages_unacknowledged") == 20, timeout=30,
                 interval=0.5, what="20 messages held unacknowledged")
        wait_for(lambda: len([r for r in pipe.log_records(proc) if "retrying" in r.get("message", "")
                              or "retried later" in r.get("message", "")]) >= 2, timeout=30,
                 what="the consumer retrying")
        assert queue_counts(mq_vhost, q)["messages"] == 20      # nothing acknowledged meanwhile
        assert proc.poll() is None

        private_pg.start()
        wait_for(lambda: queue_counts(mq_vhost, q).get("messages") == 0, timeout=60, interval=0.5,
                 what="everything acknowledged after the database returned")
        assert pipe.ledger_count() == 21
        assert pipe.position("BTCUSDT")["size"] == "21"
        assert proc.poll() is None
    finally:
        pipe.close()


def test_rabbitmq_restart_consumer_and_relay_reconnect_nothing_lost(private_mq, settings, tmp_path):
    pipe = Pipeline(settings, "/", tmp_path, rabbit_port=private_mq.port)
    try:
        q = pipe.settings.order_queue
        pipe.start("order")
        pipe.start("relay")
        pipe.publish_many(q, [m.execution("ETHUSDT", "Buy", "1", "2000", at=i) for i in range(10)])
        wait_for(lambda: pipe.ledger_count() == 10, what="10 applied before the restart")
        wait_for(lambda: pipe.one("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL") == 0,
                 what="their events relayed")
        # one event per position per consumer batch (pm.apply_batch), so 1..10 of them
        before = pipe.one("SELECT count(*) FROM pm.outbox WHERE event_type = 'position_updated'")
        seen = {p.message_id for p, _ in pipe.events(expect=before)}

        pipe.mq.close()
        private_mq.stop()
        # changes while the broker is away: the relay must publish them once it is back
        for i in range(10, 15):
            pipe.db.execute("SELECT pm.apply_order_event(%s::jsonb)",
                            (json.dumps(m.execution("ETHUSDT", "Buy", "1", "2000", at=i)),))
        private_mq.start()
        pipe.publish_many(q, [m.execution("ETHUSDT", "Buy", "1", "2000", at=i) for i in range(15, 25)])

        wait_for(lambda: pipe.ledger_count() == 25 and pipe.depth(q) == 0, timeout=90, what="25 applied")
        wait_for(lambda: pipe.one("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL") == 0, timeout=60,
                 what="the outbox drained")
        all_ids = {r[0] for r in pipe.db.execute(
            "SELECT event_id::text FROM pm.outbox WHERE event_type = 'position_updated'").fetchall()}
        assert len(all_ids) == pipe.position("ETHUSDT")["version"]   # one event per change
        wait_for(lambda: seen.update(p.message_id for p, _ in pipe.events()) or all_ids <= seen, timeout=30,
                 what="every position_updated event on the queue")
        assert pipe.position("ETHUSDT")["size"] == "25"
        assert all(proc.poll() is None for proc, _ in pipe.processes)
    finally:
        pipe.close()
