#!/usr/bin/env python3
"""End-to-end pipeline benchmark: executions/s from the order queue into positions.

One run, three measurements of the same N executions (shape A, over 50 assets, realistic
prices and quantities, in time order):

  e2e     N messages published to the order queue (default exchange, routing key = queue name,
          persistent) BEFORE the consumer starts; then `python -m consumers order` (and, unless
          --no-relay, the outbox relay beside it, publishing one position_updated per
          execution, as in production) runs until the ledger holds N executions. Rate =
          N / (time from the consumer's start to the last commit); "steady" excludes start-up
          (first to last ledger row).
  sql     the same executions through pm.apply_order_event on one connection, committing every
          100 (the SQL core's own rate), on a fresh database.
  broker  a no-op pika consumer that only acknowledges the same N messages (same prefetch, one
          multiple-ack per batch): the broker + pika ceiling.

At the end every position of the e2e database is compared with the fold computed in Python
of what was published (exact Decimal: size, average, realized), and the ledger count with N.

    .venv/bin/python bench/e2e_bench.py              # N = 100,000 (about 3-4 minutes here)
    .venv/bin/python bench/e2e_bench.py --n 20000    # quicker look

Uses POSTGRES_* / RABBITMQ_* from the environment (defaults: local services); creates and drops
its own databases and queues.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pika
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import db as appdb  # noqa: E402
from app import settings as settings_mod  # noqa: E402
from jobs import migrate  # noqa: E402
from tests.pipeline.messages import fold  # noqa: E402  (the reference fold the pipeline tests use)

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


def generate(n: int, assets: int, seed: int) -> tuple[list[str], dict[str, list]]:
    """n shape-A bodies over `assets` symbols, and each symbol's fills for the reference fold."""
    rng = random.Random(seed)
    symbols = [f"E{i:02d}USDT" for i in range(assets)]
    # prices from ~0.05 to ~60,000 USDT (log-uniform), quantities worth ~10..5,000 USDT
    price = {s: Decimal(str(round(10 ** rng.uniform(-1.3, 4.8), 4))) for s in symbols}
    fills: dict[str, list] = {s: [] for s in symbols}
    bodies = []
    run = uuid.uuid4().hex[:8]
    for i in range(n):
        s = rng.choice(symbols)
        price[s] = max(Decimal("0.0001"), (price[s] * Decimal(str(1 + rng.uniform(-0.001, 0.001)))).quantize(Decimal("0.0001")))
        qty = (Decimal(str(rng.uniform(10, 5000))) / price[s]).quantize(Decimal("0.001"))
        qty = max(qty, Decimal("0.001"))
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


def fresh_database(settings: settings_mod.Settings, name: str) -> settings_mod.Settings:
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    s = settings.with_overrides(postgres_db=name)
    migrate.ensure_database(s)
    migrate.apply(s)
    return s


def drop_database(settings: settings_mod.Settings, name: str) -> None:
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def mq_connect(settings: settings_mod.Settings) -> pika.BlockingConnection:
    from app import broker
    return broker.connect(settings, "bench")


def publish(settings: settings_mod.Settings, queue: str, bodies: list[str]) -> float:
    conn = mq_connect(settings)
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


def broker_ceiling(settings: settings_mod.Settings, queue: str, n: int) -> float:
    """A consumer that only acknowledges: same prefetch, one multiple-ack per batch."""
    conn = mq_connect(settings)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=settings.consumer_prefetch)
    state = {"seen": 0, "last_tag": 0}
    batch = settings.consumer_batch_size

    def on_message(channel, method, _props, _body):
        state["seen"] += 1
        state["last_tag"] = method.delivery_tag
        if state["seen"] % batch == 0 or state["seen"] == n:
            channel.basic_ack(method.delivery_tag, multiple=True)

    t = time.perf_counter()
    ch.basic_consume(queue, on_message)
    while state["seen"] < n:
        conn.process_data_events(time_limit=0.01)
    rate = n / (time.perf_counter() - t)
    ch.queue_delete(queue)
    conn.close()
    return rate


def direct_sql(settings: settings_mod.Settings, bodies: list[str], every: int = 100) -> tuple[float, dict]:
    with appdb.connect(settings) as conn:
        backend = conn.info.backend_pid
        cpu0, client0 = cpu_seconds(backend), time.process_time()
        t = time.perf_counter()
        for i in range(0, len(bodies), every):
            with conn.transaction():
                for body in bodies[i:i + every]:
                    conn.execute(appdb.q("apply_order_event"), {"event": body}).fetchone()
        rate = len(bodies) / (time.perf_counter() - t)
        cpu1 = cpu_seconds(backend)
        return rate, {"backend": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                      "client": time.process_time() - client0}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a local process (/proc), None when it is gone or not local."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def backend_cpu(conn: psycopg.Connection) -> dict[str, float]:
    """CPU seconds of this database's other client backends, by what they last ran."""
    rows = conn.execute("SELECT pid, left(regexp_replace(query, '\\s+', ' ', 'g'), 60) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'").fetchall()
    out: dict[str, float] = {}
    for pid, query in rows:
        cpu = cpu_seconds(pid)
        if cpu is not None:
            out[f"backend {pid}: {query}"] = cpu
    return out


def end_to_end(settings: settings_mod.Settings, env: dict, n: int, relay: bool, log_path: Path) -> dict:
    procs = []
    log = open(log_path, "wb")
    t = time.perf_counter()
    started = datetime.now(timezone.utc)
    for role in (("order", "relay") if relay else ("order",)):
        procs.append(subprocess.Popen([sys.executable, "-m", "consumers", role], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=log))
    try:
        with appdb.connect(settings, autocommit=True) as conn:
            count = 0
            while count < n:
                time.sleep(0.2)
                count = conn.execute("SELECT count(*) FROM pm.executions WHERE kind = 'trade'").fetchone()[0]
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a consumer process died, see {log_path}")
            elapsed = time.perf_counter() - t
            cpu = {f"python {role}": cpu_seconds(p.pid) for role, p in zip(("consumer", "relay"), procs)}
            cpu.update(backend_cpu(conn))
            first, last = conn.execute("SELECT min(applied_at), max(applied_at) FROM pm.executions").fetchone()
            pending = conn.execute("SELECT count(*) FROM pm.outbox WHERE published_at IS NULL").fetchone()[0]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
        log.close()
    # applied_at is the commit's transaction time: the last row's is the start of the last batch
    to_last = (last - started).total_seconds()
    return {"rate": n / elapsed, "rate_to_last_commit": n / max(to_last, 1e-9),
            "steady": n / max((last - first).total_seconds(), 1e-9), "elapsed": elapsed,
            "outbox_pending_at_end": pending, "cpu": cpu}


def verify(settings: settings_mod.Settings, n: int, fills: dict[str, list]) -> list[str]:
    problems = []
    with appdb.connect(settings, autocommit=True) as conn:
        ledger = conn.execute("SELECT count(*) FROM pm.executions WHERE kind = 'trade'").fetchone()[0]
        if ledger != n:
            problems.append(f"ledger holds {ledger} executions, {n} published")
        dead = conn.execute("SELECT count(*) FROM pm.dead_letters").fetchone()[0]
        if dead:
            problems.append(f"{dead} dead letters")
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT asset, size, average_entry_price, realized_pnl FROM public.positions WHERE mode = 'one-way'")}
    for asset, asset_fills in fills.items():
        if not asset_fills:
            continue
        expected = fold(asset_fills)
        got = rows.get(asset)
        if got is None or (Decimal(got[0]), None if got[1] is None else Decimal(got[1]), Decimal(got[2])) != expected:
            problems.append(f"{asset}: stored {got}, fold {expected}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="executions (default 100,000)")
    ap.add_argument("--assets", type=int, default=50)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-relay", action="store_true", help="run the order consumer without the relay beside it")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    ap.add_argument("--e2e-only", action="store_true", help="skip the broker ceiling and direct SQL runs")
    args = ap.parse_args(argv)

    base = settings_mod.load()
    tag = f"{os.getpid()}"
    queues = {"POSITION_MANAGER_ORDER_QUEUE": f"bench-{tag}.order_executed",
              "POSITION_MANAGER_POSITION_QUEUE": f"bench-{tag}.position",
              "POSITION_MANAGER_DEAD_LETTER_QUEUE": f"bench-{tag}.dead_letter",
              "POSITION_MANAGER_POSITION_UPDATED_QUEUE": f"bench-{tag}.position_updated",
              "POSITION_MANAGER_PORTFOLIO_UPDATED_QUEUE": f"bench-{tag}.portfolio_updated",
              "POSITION_MANAGER_SNAPSHOT_CREATED_QUEUE": f"bench-{tag}.position_snapshot_created"}
    e2e_db, sql_db = f"pm_bench_e2e_{tag}", f"pm_bench_sql_{tag}"
    env = {**os.environ, **queues, "POSTGRES_DB": e2e_db, "PYTHONPATH": str(ROOT)}
    settings = settings_mod.load(env)
    print(f"generating {args.n} executions over {args.assets} assets ...", flush=True)
    bodies, fills = generate(args.n, args.assets, args.seed)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"e2e_bench_{tag}.log"
    results: dict = {}
    try:
        # broker ceiling: publish, then a consumer that only acks
        noop_queue = f"bench-{tag}.noop"
        if not args.e2e_only:
            publish(settings, noop_queue, bodies)
            results["broker"] = broker_ceiling(settings, noop_queue, args.n)
            print(f"broker ceiling (no-op ack consumer): {results['broker']:,.0f} msg/s", flush=True)

        # end to end
        fresh_database(base, e2e_db)
        results["publish"] = publish(settings, settings.order_queue, bodies)
        print(f"published {args.n} to {settings.order_queue} at {results['publish']:,.0f} msg/s", flush=True)
        e2e = end_to_end(settings, env, args.n, relay=not args.no_relay, log_path=log_path)
        results["e2e"] = e2e
        print(f"end to end ({'consumer + relay' if not args.no_relay else 'consumer only'}): "
              f"{e2e['rate']:,.0f} executions/s ({e2e['elapsed']:.1f} s incl. start-up; "
              f"steady {e2e['steady']:,.0f}/s; outbox rows not yet relayed at the end: {e2e['outbox_pending_at_end']})",
              flush=True)
        problems = verify(settings, args.n, fills)

        if args.e2e_only:
            for name, seconds in sorted(e2e["cpu"].items(), key=lambda kv: -(kv[1] or 0)):
                if seconds:
                    print(f"  {seconds / args.n * 1e6:8.0f} us CPU per execution  {name}")
            for p in problems[:20]:
                print("  " + p)
            return 1 if problems else 0
        # the SQL core alone, same executions, fresh database
        sql_settings = fresh_database(base, sql_db)
        results["sql"], results["sql_cpu"] = direct_sql(sql_settings, bodies)
        print(f"direct SQL (one connection, commit every 100): {results['sql']:,.0f} executions/s", flush=True)
    finally:
        try:
            conn = mq_connect(settings)
            ch = conn.channel()
            for q in (*queues.values(), f"bench-{tag}.noop"):
                ch.queue_delete(q)
            conn.close()
        except Exception as exc:  # noqa: BLE001
            print(f"(could not delete the benchmark queues: {exc})", file=sys.stderr)
        if not args.keep:
            for name in (e2e_db, sql_db):
                drop_database(base, name)

    ratio = results["e2e"]["rate"] / results["sql"]
    print()
    print(f"| measurement (N = {args.n:,}, {args.assets} assets) | executions/s |")
    print("|---|---|")
    print(f"| broker ceiling: no-op pika consumer, acks only | {results['broker']:,.0f} |")
    print(f"| direct SQL: pm.apply_order_event, one connection, commit every 100 | {results['sql']:,.0f} |")
    print(f"| end to end: queue -> consumer -> positions{' (relay running)' if not args.no_relay else ''} "
          f"| {results['e2e']['rate']:,.0f} ({ratio:.0%} of direct SQL) |")
    print(f"| end to end, steady state (first to last commit) | {results['e2e']['steady']:,.0f} |")
    print(f"\nCPU per execution (microseconds), end to end:")
    for name, seconds in sorted(results["e2e"]["cpu"].items(), key=lambda kv: -(kv[1] or 0)):
        if seconds:
            print(f"  {seconds / args.n * 1e6:8.0f}  {name}")
    sql_cpu = results["sql_cpu"]
    print(f"CPU per execution (microseconds), direct SQL: backend "
          f"{(sql_cpu['backend'] or 0) / args.n * 1e6:.0f}, client {sql_cpu['client'] / args.n * 1e6:.0f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if problems:
        print(f"\nVERIFICATION FAILED ({len(problems)}):")
        for p in problems[:20]:
            print("  " + p)
        return 1
    print(f"\nverified: {args.n:,} executions in the ledger, every position equals the Python fold "
          f"(size, average, realized; exact), no dead letters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
