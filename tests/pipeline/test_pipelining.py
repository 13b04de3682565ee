"""The consumer's pipelining (consumers/consumer.py): the next batch goes to the database while the
committed one is acknowledged, and nothing is acknowledged before its own commit, whatever dies
in the middle."""
from __future__ import annotations

import random
import signal
from decimal import Decimal

from tests.pipeline import messages as m
from tests.pipeline.conftest import queue_counts, wait_for

SMALL_BATCHES = {"POSITION_MANAGER_CONSUMER_BATCH_SIZE": "20", "POSITION_MANAGER_CONSUMER_PREFETCH": "40"}


def D(x) -> Decimal | None:
    return None if x is None else Decimal(x)


def processed(pipe, proc=None) -> list[dict]:
    return [r for r in pipe.log_records(proc) if r.get("message") == "message processed"]


def fills_over(assets: list[str], n: int, seed: int, tag: str) -> tuple[list[dict], dict[str, list]]:
    rng = random.Random(seed)
    fills: dict[str, list] = {a: [] for a in assets}
    bodies = []
    for i in range(n):
        asset = rng.choice(assets)
        fill = (rng.choice(["Buy", "Sell"]), str(Decimal(rng.randint(1, 500)) / 100), str(rng.randint(90, 110)), "0.01")
        fills[asset].append(fill)
        bodies.append(m.execution(asset, *fill, at=i, exec_id=f"{tag}-{i}"))
    return bodies, fills


def assert_positions(pipe, fills: dict[str, list]) -> None:
    for asset, asset_fills in fills.items():
        if asset_fills:
            pos = pipe.position(asset)
            assert (D(pos["size"]), D(pos["average_entry_price"]), D(pos["realized_pnl"])) == m.fold(asset_fills), asset
            # one version bump and one position_updated per batch that changed it: none counted twice
            events = pipe.one("SELECT count(*) FROM pm.outbox WHERE event_type = 'position_updated' "
                              "AND asset = %s", asset)
            assert events == pos["version"], asset


def test_killed_while_the_next_batch_is_applied_nothing_acknowledged_before_its_commit(pipe):
    """SIGKILL right after the 3rd commit, with batches of 20 queued behind each other: the
    committed batches may or may not be acknowledged yet, the uncommitted never are; a second
    consumer then applies everything exactly once."""
    q = pipe.settings.order_queue
    bodies, fills = fills_over([f"P{i}USDT" for i in range(4)], 200, 11, "pipe")
    pipe.publish_many(q, bodies)
    first = pipe.start("order", PM_TEST_KILL_AFTER_COMMITS="3", **SMALL_BATCHES)
    assert first.wait(timeout=60) == -signal.SIGKILL
    committed = pipe.ledger_count()
    acknowledged = len(bodies) - pipe.depth(q)
    assert committed >= 3 and acknowledged <= committed, (acknowledged, committed)

    second = pipe.start("order", **SMALL_BATCHES)
    wait_for(lambda: pipe.depth(q) == 0 and pipe.ledger_count() == len(bodies)
             and len(processed(pipe, second)) == len(bodies) - acknowledged,
             timeout=60, what="everything applied and acknowledged")
    assert pipe.ledger_count() == len(bodies)
    assert_positions(pipe, fills)
    assert pipe.depth(pipe.settings.dead_letter_queue) == 0


def test_database_connection_killed_mid_batch_nothing_lost_or_counted_twice(pipe, mq_vhost):
    """The consumer's backend is terminated while it applies a batch (held by a slow trigger on one
    execution) and the committed batch before it is being acknowledged: that batch is retried on a
    new connection; every execution is applied once and every message acknowledged once."""
    q = pipe.settings.order_queue
    bodies, fills = fills_over([f"Q{i}USDT" for i in range(3)], 120, 12, "cut")
    # (a sequence, not a table, says whether it slowed down once: the rollback does not undo it)
    pipe.db.execute("CREATE SEQUENCE public.slowed")
    pipe.db.execute("""CREATE FUNCTION public.slow_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.exec_key LIKE '%cut-50' AND nextval('public.slowed') = 1 THEN
                PERFORM set_config('application_name', 'slowed', false);
                PERFORM pg_sleep(30);
            END IF;
            RETURN NEW;
        END $$""")
    pipe.db.execute("CREATE TRIGGER slow_once BEFORE INSERT ON pm.executions FOR EACH ROW EXECUTE FUNCTION public.slow_once()")
    pipe.publish_many(q, bodies)
    proc = pipe.start("order", **SMALL_BATCHES)
    pid = wait_for(lambda: pipe.one("SELECT pid FROM pg_stat_activity WHERE application_name = 'slowed'"),
                   timeout=30, what="the consumer's backend in the slow batch")
    before = pipe.ledger_count()
    assert before < len(bodies)
    # (ready + unacknowledged: what the broker still holds)
    acknowledged = len(bodies) - queue_counts(mq_vhost, q)["messages"]
    assert acknowledged <= before, (acknowledged, before)   # the held batch is not acknowledged
    assert acknowledged >= 10   # the batches before the one held were acknowledged (batches <= 20)
    pipe.db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: pipe.depth(q) == 0 and pipe.ledger_count() == len(bodies)
             and len(processed(pipe, proc)) == len(bodies),
             timeout=60, what="everything applied after the reconnect")
    assert proc.poll() is None   # it kept running
    assert pipe.ledger_count() == len(bodies)
    assert sorted(r["delivery_tag"] for r in processed(pipe, proc)) == list(range(1, len(bodies) + 1))
    assert_positions(pipe, fills)
    assert pipe.depth(pipe.settings.dead_letter_queue) == 0


def test_heartbeats_go_on_through_a_long_backlog(pipe):
    """Under a backlog one batch follows the other without a pause; the consumer still beats (and
    reports the backlog) every heartbeat interval, between two batches."""
    q = pipe.settings.order_queue
    bodies, _ = fills_over([f"H{i}USDT" for i in range(5)], 6000, 13, "beat")
    pipe.publish_many(q, bodies)
    proc = pipe.start("order", POSITION_MANAGER_HEARTBEAT_INTERVAL="0.2",
                      POSITION_MANAGER_CONSUMER_BATCH_SIZE="50", POSITION_MANAGER_CONSUMER_PREFETCH="100")
    beats, seen = set(), set()
    while pipe.ledger_count() < len(bodies) - 500:
        row = pipe.db.execute("SELECT beat_at, (figures -> 'gauges' ->> 'queue_depth')::numeric FROM pm.heartbeats "
                              "WHERE role = 'order' AND instance <> ''").fetchone()
        if row is not None:
            beats.add(row[0])
            seen.add(row[1])
        assert proc.poll() is None
        pipe.db.execute("SELECT pg_sleep(0.1)")
    assert len(beats) >= 3, beats                 # several beats while the backlog was worked off
    assert any(depth and depth > 0 for depth in seen), seen
