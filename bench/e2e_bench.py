#!/usr/bin/env python3
"""End-to-end pipeline benchmark: executions/s from the order queue into positions.

One run, three measurements of the same N executions (shape A, over --assets symbols priced
~0.05..60,000 USDT, ~10..5,000 USDT each, in time order):

  broker  the reference of e2e: a no-op consumer reading the same N messages from a queue of the
          same kind (durable, persistent messages, published the same way): the same pika
          BlockingConnection (app.broker.connect), the same prefetch, one multiple-ack per batch
          of the consumer's batch size, and nothing else. The broker + pika ceiling of a consumer.
          Measured just before e2e and again just after it; the faster of the two is the
          reference (the load of a shared machine moves; the higher reference is the stricter).
  e2e     N messages published to a fresh order queue (default exchange, persistent) BEFORE the
          consumer starts; then `bin/consume order` (and, unless --no-relay, the outbox relay
          beside it, publishing one position_updated per change, as in production) runs until the
          ledger holds N executions. Rate = N / (consumer start to last commit seen); "steady"
          excludes start-up (first to last ledger row). Both beside `broker`.
  sql     the same executions through pm.apply_order_event on one connection, committing every
          100, on a fresh database (the SQL core's own rate, message by message).

At the end every position of the e2e database is compared with the reference fold
(bench/reference.py) of what was published (exact Decimal size, average, realized), and the
ledger count with N; the run fails when they differ. The consumer's batch size and prefetch come
from the environment like the service's (POSITION_MANAGER_CONSUMER_BATCH_SIZE / _PREFETCH).

    bench/run e2e              # N = 100,000 (3-8 minutes here)
    bench/run e2e --n 20000    # quicker look; --no-relay: the consumer alone

Writes bench/results/e2e.json (--json FILE elsewhere). Creates and drops its own databases and queues.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pika  # noqa: E402

from app import db as appdb  # noqa: E402
from app import settings as settings_mod  # noqa: E402
from bench import common  # noqa: E402
from bench.common import figure, q, reference  # noqa: E402
from bench.reference import fold_fills  # noqa: E402

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
TUNING = ("POSITION_MANAGER_CONSUMER_BATCH_SIZE", "POSITION_MANAGER_CONSUMER_PREFETCH")


def generate(n: int, assets: int, seed: int) -> tuple[list[str], dict[str, list]]:
    """n shape-A bodies over `assets` symbols, and each symbol's fills for the reference fold."""
    rng = random.Random(seed)
    symbols = [f"E{i:02d}USDT" for i in range(assets)]
    price = {s: Decimal(str(round(10 ** rng.uniform(-1.3, 4.8), 4))) for s in symbols}
    fills: dict[str, list] = {s: [] for s in symbols}
    bodies = []
    run = uuid.uuid4().hex[:8]
    for i in range(n):
        s = rng.choice(symbols)
        price[s] = max(Decimal("0.0001"), (price[s] * Decimal(str(1 + rng.uniform(-0.001, 0.001)))).quantize(Decimal("0.0001")))
        qty = max(Decimal("0.001"), (Decimal(str(rng.uniform(10, 5000))) / price[s]).quantize(Decimal("0.001")))
        side = rng.choice(("Buy", "Sell"))
        fee = (qty * price[s] * Decimal("0.00055")).quantize(Decimal("0.00000001"))
        fills[s].append((side, qty, price[s], fee))
        bodies.append(json.dumps({
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))), "event_type": "order_executed",
            "execution_id": f"{run}-{i}", "order_id": f"{run}-o{i // 2}", "asset": s, "side": side,
            "execution_quantity": str(qty), "execution_price": str(price[s]), "execution_fees": str(fee),
            "executed_at": (T0 + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
            "trace_id": f"bench-{i}"}))
    return bodies, fills


def publish(settings: settings_mod.Settings, queue: str, bodies: list[str]) -> float:
    conn = common.mq_connect(settings, "bench-publisher")
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    t = time.perf_counter()
    for i, body in enumerate(bodies):
        ch.basic_publish("", queue, body.encode(), props)
        if i % 5000 == 4999:
            conn.process_data_events(0)
    # wait until the broker holds them all (publishing without confirms is asynchronous)
    while ch.queue_declare(queue, passive=True).method.message_count < len(bodies):
        conn.sleep(0.05)
    rate = len(bodies) / (time.perf_counter() - t)
    conn.close()
    return rate


def broker_ceiling(settings: settings_mod.Settings, queue: str, n: int) -> tuple[float, float]:
    """A consumer that only acknowledges: the consumer's connection, prefetch and batch size, one
    multiple-ack per batch (the consumer's own acknowledgement). (messages/s, CPU seconds it used)"""
    conn = common.mq_connect(settings, "bench-noop")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=settings.consumer_prefetch)
    state = {"seen": 0}
    batch = settings.consumer_batch_size

    def on_message(channel, method, _props, _body):
        state["seen"] += 1
        if state["seen"] % batch == 0 or state["seen"] == n:
            channel.basic_ack(method.delivery_tag, multiple=True)

    t, cpu = time.perf_counter(), time.process_time()
    ch.basic_consume(queue, on_message)
    while state["seen"] < n:
        conn.process_data_events(time_limit=0.01)
    rate, cpu = n / (time.perf_counter() - t), time.process_time() - cpu
    ch.queue_delete(queue)
    conn.close()
    return rate, cpu


def direct_sql(settings: settings_mod.Settings, bodies: list[str], every: int = 100) -> tuple[float, dict]:
    with appdb.connect(settings) as conn:
        backend = conn.info.backend_pid
        cpu0, client0 = common.cpu_seconds(backend), time.process_time()
        t = time.perf_counter()
        for i in range(0, len(bodies), every):
            with conn.transaction():
                for body in bodies[i:i + every]:
                    conn.execute(appdb.q("apply_order_event"), {"event": body}).fetchone()
        rate = len(bodies) / (time.perf_counter() - t)
        cpu1 = common.cpu_seconds(backend)
        return rate, {"backend": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                      "client": time.process_time() - client0}


def backend_cpu(conn) -> dict[str, float]:
    """CPU seconds of this database's other client backends, by what they last ran."""
    out: dict[str, float] = {}
    for pid, query in conn.execute(q("client_backends")).fetchall():
        cpu = common.cpu_seconds(pid)
        if cpu is not None:
            out[f"backend {pid}: {query}"] = cpu
    return out


def end_to_end(settings: settings_mod.Settings, env: dict, n: int, relay: bool, log_dir: Path) -> dict:
    roles = ("order", "relay") if relay else ("order",)
    started = datetime.now(timezone.utc)
    t = time.perf_counter()
    services = [common.start_consumers(env, log_dir, role) for role in roles]
    try:
        with appdb.connect(settings, autocommit=True) as conn:
            count = 0
            while count < n:
                time.sleep(0.2)
                count = conn.execute(q("ledger_trades")).fetchone()[0]
                dead = [s for s in services if not s.alive()]
                if dead:
                    raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].tail()}")
            elapsed = time.perf_counter() - t
            cpu = {f"python {s.name}": common.cpu_seconds(s.pid) for s in services}
            cpu.update(backend_cpu(conn))
            first, last = conn.execute(q("applied_span")).fetchone()
            pending = conn.execute(q("outbox_pending")).fetchone()[0]
    finally:
        common.stop_all(services)
    span = (last - first).total_seconds()
    return {"rate": n / elapsed, "steady": n / span if span > 0 else None,   # None: all in one commit
            "rate_to_last_commit": n / max((last - started).total_seconds(), 1e-9),
            "elapsed": elapsed, "outbox_pending_at_end": pending, "cpu": cpu}


def verify(settings: settings_mod.Settings, n: int, fills: dict[str, list]) -> list[str]:
    """What differs from what was published: ledger count, dead letters, positions vs the fold."""
    problems = []
    with appdb.connect(settings, autocommit=True) as conn:
        ledger = conn.execute(q("ledger_trades")).fetchone()[0]
        if ledger != n:
            problems.append(f"ledger holds {ledger} executions, {n} published")
        dead = conn.execute(q("dead_letter_count")).fetchone()[0]
        if dead:
            problems.append(f"{dead} dead letters")
        rows = {r[0]: r[1:] for r in conn.execute(q("one_way_positions"))}
    for asset, asset_fills in fills.items():
        if not asset_fills:
            continue
        expected = fold_fills(asset_fills)
        got = rows.get(asset)
        if got is None or (Decimal(got[0]), None if got[1] is None else Decimal(got[1]), Decimal(got[2])) != expected:
            problems.append(f"{asset}: stored {got}, fold {expected}")
    return problems


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="executions (default 100,000)")
    ap.add_argument("--assets", type=int, default=50)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-relay", action="store_true", help="run the order consumer without the relay beside it")
    common.add_json_option(ap, "e2e")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    base = settings_mod.load()
    tag = f"{os.getpid()}"
    queues = common.queue_names(f"bench-e2e-{tag}")
    e2e_db, sql_db = f"pm_bench_e2e_{tag}", f"pm_bench_sql_{tag}"
    settings = settings_mod.load({**os.environ, **queues, "POSTGRES_DB": e2e_db})
    env = common.service_env(settings, **queues)
    log_dir = common.OUT / f"e2e-{tag}"
    print(f"generating {args.n} executions over {args.assets} assets ...", flush=True)
    bodies, fills = generate(args.n, args.assets, args.seed)
    noop_queue = f"bench-e2e-{tag}.noop"
    noop_runs: list[tuple[float, float]] = []

    def noop() -> None:
        publish(settings, noop_queue, bodies)
        noop_runs.append(broker_ceiling(settings, noop_queue, args.n))
        print(f"no-op consumer (the reference): {noop_runs[-1][0]:,.0f} msg/s", flush=True)

    try:
        noop()

        common.fresh_database(base, e2e_db)
        published = publish(settings, settings.order_queue, bodies)
        print(f"published {args.n} to {settings.order_queue} at {published:,.0f} msg/s", flush=True)
        e2e = end_to_end(settings, env, args.n, relay=not args.no_relay, log_dir=log_dir)
        print(f"end to end: {e2e['rate']:,.0f} executions/s", flush=True)
        problems = verify(settings, args.n, fills)
        noop()
        broker, noop_cpu = max(noop_runs)

        sql_settings = common.fresh_database(base, sql_db)
        direct, direct_cpu = direct_sql(sql_settings, bodies)
        print(f"direct SQL (one connection, commit every 100): {direct:,.0f} executions/s", flush=True)
    finally:
        try:
            common.delete_queues(settings, [v for k, v in queues.items() if k.endswith("_QUEUE")] + [noop_queue])
        except Exception as exc:  # noqa: BLE001 - reported, the databases are still dropped
            print(f"(could not delete the benchmark queues: {exc})", file=sys.stderr)
        for name in (e2e_db, sql_db):
            common.drop_database(base, name)

    noop_label = (f"no-op pika consumer, the faster of a run before and after (acknowledges only: same "
                  f"connection, prefetch {settings.consumer_prefetch}, one multiple-ack per {settings.consumer_batch_size})")
    noop_ref = reference(noop_label, broker, "messages/s")
    relay = "" if args.no_relay else ", relay running"
    figures = [
        figure("e2e", f"end to end: queue -> consumer -> positions{relay}", e2e["rate"], "executions/s",
               reference=noop_ref),
        figure("e2e_steady", f"end to end, steady state (first to last commit){relay}", e2e["steady"],
               "executions/s", reference=noop_ref),
        figure("broker", noop_label, broker, "messages/s"),
        figure("direct_sql", "direct SQL: pm.apply_order_event, one connection, commit every 100", direct,
               "executions/s", reference=noop_ref),
    ]
    tuning = {k: os.environ[k] for k in TUNING if k in os.environ}
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in tuning.items()), common.explicit_command("e2e", ap, args)])
    cpu_us = {name: round(seconds / args.n * 1e6, 1) for name, seconds in e2e["cpu"].items() if seconds}
    path = common.write_result(
        "e2e", command=command, passed=not problems, path=args.json,
        params=vars(args) | {"consumer_batch_size": settings.consumer_batch_size,
                             "consumer_prefetch": settings.consumer_prefetch},
        figures=figures,
        detail={"cpu_us_per_execution": cpu_us,
                "noop_consumer_cpu_us_per_message": round(noop_cpu / args.n * 1e6, 1),
                "noop_consumer_runs": [round(rate) for rate, _ in noop_runs],
                "direct_sql_cpu_us_per_execution": {k: round((v or 0) / args.n * 1e6, 1) for k, v in direct_cpu.items()},
                "publish_rate": published, "outbox_pending_at_end": e2e["outbox_pending_at_end"],
                "problems": problems[:20]})
    for f in figures:
        if f["value"] is None:
            continue
        ratio = f" ({f['value'] / f['reference']['value']:.0%} of the reference)" if f["reference"] else ""
        print(f"  {f['label']}: {f['value']:,.0f} {f['unit']}{ratio}")
    for name, us in sorted(cpu_us.items(), key=lambda kv: -kv[1]):
        print(f"  {us:8.0f} us CPU per execution  {name}")
    if problems:
        print(f"\nVERIFICATION FAILED ({len(problems)}):")
        for p in problems[:20]:
            print("  " + p)
    else:
        print(f"\nverified: {args.n:,} executions in the ledger, every position equals the reference fold, no dead letters")
    print(f"(written to {path})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
