"""bench/soak: its reference fold and traffic against the real SQL core, and the 30-second soak
itself (private PostgreSQL + RabbitMQ, real API, consumers and relay, every fault injected)."""
from __future__ import annotations

import json
import random
import subprocess
from decimal import Decimal

import pytest

from bench.common import PG_BIN, RABBIT_BIN, ROOT
from bench.soak_traffic import Execution, Traffic, fold, fold_hedge, plain


def _fills(*fills):
    return [Execution(f"k{i}", "X", "trade", side, Decimal(q), Decimal(p), Decimal(f), 1000 + i)
            for i, (side, q, p, f) in enumerate(fills)]


def test_fold_reproduces_the_worked_examples_of_the_spec():
    assert fold(_fills(("Buy", "10", "100", "0.1"), ("Buy", "10", "110", "0.11"), ("Sell", "5", "120", "0.06"))) \
        == (Decimal(15), Decimal(105), Decimal("74.73"))
    assert fold(_fills(("Sell", "1", "100", "0"), ("Sell", "1", "110", "0"))) == (Decimal(-2), Decimal(105), Decimal(0))
    assert fold(_fills(("Buy", "100", "1", "0"), ("Sell", "50", "2", "0"), ("Sell", "100", "3", "0"))) \
        == (Decimal(-50), Decimal(3), Decimal(150))


def test_fold_orders_by_execution_time_and_counts_funding_in_realized_only():
    late_first = list(reversed(_fills(("Buy", "1", "100", "0"), ("Sell", "1", "110", "0"))))
    assert fold(late_first) == (Decimal(0), None, Decimal(10))
    funding = Execution("f", "X", "funding", None, None, None, Decimal("0.5"), 5000)
    assert fold(_fills(("Buy", "2", "100", "0")) + [funding]) == (Decimal(2), Decimal(100), Decimal("-0.5"))


def test_fold_hedge_keeps_each_leg_apart():
    fills = [Execution("h1", "X", "trade", "Buy", Decimal(2), Decimal(100), Decimal("0.1"), 1, leg=1),
             Execution("h2", "X", "trade", "Sell", Decimal(1), Decimal(90), Decimal(0), 2, leg=2),
             Execution("h3", "X", "trade", "Sell", Decimal(1), Decimal(110), Decimal(0), 3, leg=1),
             Execution("h4", "X", "trade", "Buy", Decimal(1), Decimal(80), Decimal(0), 4, leg=2)]
    # long: +2@100, -1@110 -> 1 @100, realized +10; short: +1@90, -1@80 -> flat, realized +10; fee 0.1
    assert fold_hedge(fills) == (Decimal(1), Decimal(1), Decimal(100), Decimal(0), None, Decimal("19.9"))


def test_plain_prints_decimals_like_trim_scale(db):
    for text in ("0.500", "12", "12.000", "0.001", "1000", "3.14159000"):
        assert plain(Decimal(text)) == db.execute("SELECT trim_scale(%s::numeric)::text", (text,)).fetchone()[0]


def _per_asset(messages) -> dict[str, list]:
    per_asset: dict[str, list] = {}
    for m in messages:
        for e in m.executions:
            per_asset.setdefault(e.asset, []).append(e)
    return per_asset


def test_generated_traffic_shuffled_through_the_sql_core_equals_the_fold(db):
    """Every order shape the soak publishes, applied by pm.apply_order_event with whole units
    delivered out of order (one order's cumulative events stay in their order, as the soak
    publishes them) and duplicates: the ledger holds exactly the keys the soak expects and every
    position equals the fold in execution-time order."""
    traffic = Traffic(seed=3, assets=5)
    warmup = traffic.warmup()
    units = [traffic.order_unit() for _ in range(200)]
    rng = random.Random(5)
    shuffled = [u.messages for u in units if u.reorderable]
    rng.shuffle(shuffled)
    in_order = [u.messages for u in units if not u.reorderable]     # hedge: never reordered by the soak
    assert in_order and shuffled
    messages = warmup + [m for unit in shuffled + in_order for m in unit]
    for m in messages + rng.sample(messages, 30):
        db.execute("SELECT pm.apply_order_event(%s::jsonb)", (m.body.decode(),))
    assert {r[0] for r in db.execute("SELECT exec_key FROM pm.executions")} == \
        {e.key for m in messages for e in m.executions}
    per_asset = _per_asset(messages)
    _assert_positions_equal_the_fold(db, per_asset, 5 + 2)


def _assert_positions_equal_the_fold(db, per_asset, count):
    rows = db.execute("SELECT asset, mode, size, average_entry_price, realized_pnl, long_size, long_avg_price, "
                      "short_size, short_avg_price FROM public.positions").fetchall()
    assert len(rows) == count
    for asset, mode, size, avg, realized, l_size, l_avg, s_size, s_avg in rows:
        if mode == "one-way":
            assert (size, avg, realized) == fold(per_asset[asset]), asset
        else:
            assert (size, l_size, l_avg, s_size, s_avg, realized) == fold_hedge(per_asset[asset]), asset


def test_generated_traffic_in_publish_order_equals_the_fold_exactly(db):
    """In publish order with duplicates (what one queue delivers): exact keys and exact fold."""
    traffic = Traffic(seed=4, assets=5)
    messages = traffic.warmup() + [m for _ in range(200) for m in traffic.order_unit().messages]
    rng = random.Random(6)
    for m in messages:
        db.execute("SELECT pm.apply_order_event(%s::jsonb)", (m.body.decode(),))
        if rng.random() < 0.1:
            db.execute("SELECT pm.apply_order_event(%s::jsonb)", (m.body.decode(),))
    for _ in range(20):                       # position events never change size, average or realized
        db.execute("SET pm.use_ws_avg_price = false")
        db.execute("SELECT pm.apply_position_event(%s::jsonb)", (traffic.position_event().body.decode(),))
    want = {e.key for m in messages for e in m.executions}
    got = {r[0] for r in db.execute("SELECT exec_key FROM pm.executions")}
    assert got == want
    _assert_positions_equal_the_fold(db, _per_asset(messages), 5 + 2)


def test_every_poison_kind_is_rejected_by_the_sql_core_or_is_not_json(db):
    import psycopg
    traffic = Traffic(seed=9, assets=3)
    kinds = set()
    for _ in range(200):
        m = traffic.poison()
        kinds.add(m.kind)
        try:
            body = json.loads(m.body)
        except ValueError:
            continue
        fn = "pm.apply_order_event" if m.role == "order" else "pm.apply_position_event"
        with pytest.raises(psycopg.Error) as failure:
            db.execute(f"SELECT {fn}(%s::jsonb)", (json.dumps(body),))
        assert failure.value.sqlstate.startswith("22"), (m.kind, failure.value)
    assert len(kinds) == len(Traffic.POISON_KINDS)


@pytest.mark.slow
def test_soak_30_seconds_with_every_fault(tmp_path):
    if not (PG_BIN / "initdb").exists() or not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip("needs PostgreSQL and RabbitMQ binaries for the private servers")
    out = tmp_path / "soak.json"
    proc = subprocess.run([str(ROOT / "bench" / "soak"), "--duration", "30", "--json", str(out),
                           "--log-dir", str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=600)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:]
    record = json.loads(out.read_text())
    assert record["passed"] and record["benchmark"] == "soak"
    assert {f["kind"] for f in record["detail"]["faults"] if f["ok"]} == {
        "consumer_kill", "relay_kill", "api_worker_kill", "rabbitmq_restart", "postgres_restart"}
    assert all(ok for _, ok, _ in record["detail"]["checks"])
    assert {f["key"] for f in record["figures"]} >= {"executions", "api_p99", "recovery_max"}


def _checks_for(settings, db, monkeypatch, drop_published: int = 0, drop_event: int = 0) -> dict[str, bool]:
    """The soak's end-of-run checks over a database filled through the SQL core, with a record
    that misses `drop_published` published messages and `drop_event` received events."""
    from bench import soak
    traffic = Traffic(seed=11, assets=4)
    messages = traffic.warmup() + [m for _ in range(60) for m in traffic.order_unit().messages]
    for m in messages:
        db.execute("SELECT pm.apply_order_event(%s::jsonb)", (m.body.decode(),))
    run = soak.Soak(soak.parse_args(["--duration", "30", "--json", "/dev/null"]))
    run.settings, run.traffic_end = settings, 0.0
    kept = messages[:len(messages) - drop_published] if drop_published else messages
    run.record.published = [(0.0, m) for m in kept]
    events = db.execute("SELECT event_id::text, asset, mode, version FROM pm.outbox "
                        "WHERE event_type = 'position_updated' ORDER BY id").fetchall()
    for event_id, asset, mode, version in events[drop_event:]:
        run.record.seen_events.add(event_id)
        run.record.seen_versions.add((asset, mode, version))
    monkeypatch.setattr(run, "_drain_dead_letters", lambda: [])
    monkeypatch.setattr(run, "_unplanned_exits", lambda: ("no process exit but the ones injected", True, ""))
    return {name.split(" (")[0]: ok for name, ok, _ in run.check(drained=True)}


def test_the_end_checks_pass_on_a_true_record(settings, db, monkeypatch):
    checks = _checks_for(settings, db, monkeypatch)
    assert checks["ledger = published executions"] and checks["every committed change published on position_updated"]
    assert checks["every position = Python fold of the published executions"]
    assert checks["every position = pm.fold_ledger of its ledger"]
    assert checks["dead-letter queue = the poison messages"]


def test_the_end_checks_catch_an_execution_off_the_record_and_a_lost_event(settings, db, monkeypatch):
    """The soak can fail: an execution in the ledger that was never published (or, the same seen
    from the other side, a published one the record lost) and an audited change that never
    reached position_updated are both caught."""
    checks = _checks_for(settings, db, monkeypatch, drop_published=3, drop_event=1)
    assert not checks["ledger = published executions"]
    assert not checks["every position = Python fold of the published executions"]
    assert not checks["every committed change published on position_updated"]
    assert checks["every position = pm.fold_ledger of its ledger"]
