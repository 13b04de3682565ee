"""The real consumer roles and the relay write their heartbeats with their figures: /health sees
each role alive (and not once it stopped), /metrics sees messages by outcome, batch and message
times, the lag, the queue's depth and the events the relay published."""
from __future__ import annotations

import json

from tests.pipeline import messages as m
from tests.pipeline.conftest import wait_for

ROLES = ["order", "position", "relay"]
FAST = {"POSITION_MANAGER_HEARTBEAT_INTERVAL": "0.2", "POSITION_MANAGER_HEARTBEAT_TIMEOUT": "2"}


def metrics(pipe) -> dict:
    return pipe.one("SELECT pm.metrics(%s)", ROLES)["consumers"]


def alive(pipe) -> dict[str, bool]:
    # the test's connection has the default timeout of 30 s: ask with the processes' own
    pipe.db.execute("SET pm.heartbeat_timeout = 2")
    return {role: c["alive"] for role, c in pipe.one("SELECT pm.liveness(%s)", ROLES).items()}


def test_roles_beat_and_their_figures_reach_the_database(pipe):
    procs = {role: pipe.start(role, **FAST) for role in ROLES}
    wait_for(lambda: all(alive(pipe).values()), what="every role alive")

    order_q, position_q = pipe.settings.order_queue, pipe.settings.position_queue
    fill = m.execution("BTCUSDT", "Buy", "1", "100", at=1)
    pipe.publish(order_q, fill)
    pipe.publish(order_q, fill)                                          # duplicate
    pipe.publish(order_q, m.execution("ETHUSDT", "Buy", "2", "10", at=2))
    pipe.publish(order_q, {"event_type": "order_executed", "asset": "BTCUSDT"})   # invalid: dead-lettered
    pipe.publish(order_q, b"{not json")                                 # invalid: dead-lettered
    pipe.publish(position_q, m.ws_position("BTCUSDT", "1", "Buy", "101", avg="100", at=3))

    def settled():
        c = metrics(pipe)
        counters = c["order"]["counters"]
        done = (counters.get("messages:applied"), counters.get("messages:duplicate"), counters.get("messages:invalid"))
        return c if done == (2, 1, 2) and c["position"]["counters"].get("messages:applied") == 1 \
            and c["relay"]["counters"].get("published:position_updated", 0) >= 3 else None

    consumers = wait_for(settled, timeout=30, what="every message counted and every change published")
    order = consumers["order"]
    assert order["instances"] == 1 and order["counters"]["message_seconds_count"] == 5
    assert order["counters"]["batch_seconds_count"] >= 1
    assert order["counters"]["batch_seconds_bucket:+Inf"] == order["counters"]["batch_seconds_count"]
    assert order["gauges"]["queue_depth"] == 0 and order["gauges"]["oldest_unprocessed_seconds"] == 0
    assert order["gauges"]["lag_seconds"] > 0          # the executions carry their time (long ago here)
    assert consumers["relay"]["counters"]["publish_seconds_count"] >= 1
    assert pipe.one("SELECT count(*) FROM pm.dead_letters") == 2
    assert pipe.one("SELECT value FROM pm.counters WHERE name = 'dead_letters'") == 2

    # a role that stops is no longer alive once its timeout passed; the others still are
    pipe.stop(procs["position"])
    wait_for(lambda: alive(pipe) == {"order": True, "position": False, "relay": True}, timeout=15,
             what="the stopped role seen as not alive")
    # its counters stay (a final heartbeat at stop)
    assert metrics(pipe)["position"]["counters"]["messages:applied"] == 1
    rows = pipe.db.execute("SELECT role, instance, figures FROM pm.heartbeats ORDER BY role").fetchall()
    assert [r[0] for r in rows] == ROLES and all(":" in r[1] for r in rows)
    assert all(set(json.loads(json.dumps(r[2]))) == {"counters", "gauges"} for r in rows)
