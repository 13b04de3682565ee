#!/usr/bin/env python3
"""Snapshot retention at a year's scale (issue 5, "Scale").

On a database of its own (created and migrated from sql/, dropped at the end unless --keep):
  * 500 open positions (real fills through pm.apply_order_event, prices through pm.set_prices);
  * hourly snapshots of all of them for --days days (365 -> 4.38 M rows), generated with
    INSERT ... SELECT generate_series (not through the API), with a snapshot_data JSON like the
    real one (--no-data: without it);
then measures
  1. one `bin/snapshot` (the real job as cron runs it: process start, lock, pm.snapshot_all);
  2. one `bin/cleanup-snapshots` deleting the oldest day (12,000 rows) while another connection
     keeps applying fills, with the fill latency percentiles before and during the cleanup; then a
     backlog of --backlog-days more days (many batches) under the same load;
  3. one `bin/validate-positions` of the 500 positions, with the fill latency during it;
  4. the snapshot-history query of one position (pm.list_snapshots, what
     GET /positions/{asset}/snapshots runs): newest 100, a one-week window, a page deep in history;
     and the Grafana portfolio-history panel over 24 h and 7 days.

    bench/snapshot_bench.py                  # full scale, 365 days (generation takes minutes, see README)
    bench/snapshot_bench.py --days 30        # quick look (about a minute)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_mod  # noqa: E402
from jobs import migrate  # noqa: E402

POSITIONS = 500
ASSETS = [f"S{i:03d}USDT" for i in range(POSITIONS)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def fmt_pct(p: dict[str, float]) -> str:
    return f"n={p['n']}, p50 {ms(p['p50'])}, p95 {ms(p['p95'])}, p99 {ms(p['p99'])}, max {ms(p['max'])}"


def fill_event(asset: str, side: str, qty: str, price: str) -> str:
    key = str(uuid.uuid4())
    return json.dumps({"event_id": key, "event_type": "order_executed", "execution_id": key, "order_id": key,
                       "asset": asset, "side": side, "execution_quantity": qty, "execution_price": price,
                       "execution_fees": "0.01", "executed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def setup_database(settings, days: int, with_data: bool) -> None:
    migrate.ensure_database(settings)
    migrate.apply(settings)
    rnd = random.Random(5)
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        started = time.monotonic()
        prices = {}
        with conn.pipeline():
            for asset in ASSETS:
                price = rnd.randint(1, 60000)
                prices[asset] = str(price)
                conn.execute("SELECT pm.apply_order_event(%s::jsonb)",
                             (fill_event(asset, rnd.choice(("Buy", "Sell")), str(rnd.randint(1, 100)), str(price)),))
        conn.execute("SELECT pm.set_prices(%s::jsonb, 'exchange')", (json.dumps(prices),))
        print(f"  {POSITIONS} positions: {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        data = ("jsonb_build_object('id', p.id, 'asset', p.asset, 'mode', p.mode, 'side', CASE WHEN p.size > 0 "
                "THEN 'long' ELSE 'short' END, 'size', p.size::text, 'average_entry_price', p.average_entry_price::text, "
                "'current_price', p.current_price::text, 'exposure_usdt', (abs(p.size) * p.current_price)::text, "
                "'unrealized_pnl', '0', 'realized_pnl', p.realized_pnl::text, 'unrealized_pnl_pct', '0', "
                "'time_held_minutes', 60, 'version', p.version, 'last_updated', pm.iso_utc(ts), "
                "'created_at', pm.iso_utc(p.created_at), 'price_updated_at', pm.iso_utc(ts))"
                if with_data else "NULL")
        # One day per statement: progress, and no single giant transaction.
        for day in range(days, 0, -1):
            conn.execute(f"""
                INSERT INTO public.position_snapshots (position_id, asset, size, average_entry_price, unrealized_pnl,
                       realized_pnl, mode, long_size, short_size, snapshot_timestamp, snapshot_data)
                SELECT p.id, p.asset, p.size, p.average_entry_price, 0, p.realized_pnl, p.mode, NULL, NULL, ts, {data}
                  FROM public.positions p
                 CROSS JOIN generate_series(date_trunc('hour', now() AT TIME ZONE 'UTC') - make_interval(days => %s),
                                            date_trunc('hour', now() AT TIME ZONE 'UTC') - make_interval(days => %s)
                                              - interval '1 hour', interval '1 hour') ts""", (day, day - 1))
            if day % 30 == 0:
                done = days - day + 1
                print(f"  snapshots: {done}/{days} days, {time.monotonic() - started:.0f} s", flush=True)
        conn.execute("VACUUM (ANALYZE) public.position_snapshots")
        rows = conn.execute("SELECT count(*) FROM public.position_snapshots").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('public.position_snapshots'))").fetchone()[0]
        print(f"  {rows:,} snapshot rows ({size} with indexes) generated in {time.monotonic() - started:.0f} s")


def job_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "POSITION_MANAGER_"))}
    env.update(POSTGRES_HOST=settings.postgres_host, POSTGRES_PORT=str(settings.postgres_port),
               POSTGRES_USER=settings.postgres_user, POSTGRES_DB=settings.postgres_db,
               POSITION_MANAGER_LOG_LEVEL="WARNING")
    if settings.postgres_password:
        env["POSTGRES_PASSWORD"] = settings.postgres_password
    return env


def run_bin(settings, *command: str, retention: int | None = None, ok=(0,)) -> tuple[float, str]:
    env = job_env(settings)
    if retention:
        env["POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS"] = str(retention)
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "bin" / command[0]), *command[1:]], env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode not in ok:
        raise SystemExit(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return elapsed, result.stdout.strip()


class FillLoad(threading.Thread):
    """Applies fills back to back on its own connection and records each one's latency."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.latencies: list[tuple[float, float]] = []   # (start time, seconds)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(11)
        try:
            with psycopg.connect(**self.settings.conninfo(), autocommit=True) as conn:
                while not self.stop.is_set():
                    event = fill_event(rnd.choice(ASSETS), "Buy", "0.01", str(rnd.randint(1, 60000)))
                    started = time.monotonic()
                    conn.execute("SELECT pm.apply_order_event(%s::jsonb)", (event,))
                    self.latencies.append((started, time.monotonic() - started))
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def between(self, start: float, end: float) -> list[float]:
        return [lat for t, lat in self.latencies if start <= t < end]


def timed(conn, query, params, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        started = time.monotonic()
        conn.execute(query, params).fetchall()
        samples.append(time.monotonic() - started)
    return percentiles(samples)


def measure(settings, days: int, backlog_days: int) -> dict:
    figures: dict = {}
    elapsed, out = run_bin(settings, "snapshot")
    figures["bin_snapshot_seconds"] = elapsed
    print(f"1. bin/snapshot (process start to exit): {ms(elapsed)}   [{out}]")

    load = FillLoad(settings)
    load.start()
    time.sleep(5)                       # baseline: fills alone
    cleanup_start = time.monotonic()
    elapsed, out = run_bin(settings, "cleanup-snapshots", "--batch-size", "5000", retention=days - 1)
    cleanup_end = time.monotonic()
    time.sleep(1)
    load.stop.set()
    load.join()
    if load.error:
        raise SystemExit(f"fill load failed: {load.error}")
    baseline = percentiles(load.between(cleanup_start - 5, cleanup_start))
    during = percentiles(load.between(cleanup_start, cleanup_end) or [0.0])
    figures.update(cleanup_seconds=elapsed, fills_baseline=baseline, fills_during_cleanup=during)
    print(f"2. bin/cleanup-snapshots of one day: {ms(elapsed)}   [{out}]")
    print(f"   fills before cleanup: {fmt_pct(baseline)}")
    print(f"   fills during cleanup: {fmt_pct(during)}")

    if backlog_days:
        # A backlog (retention lowered, or cleanup not run for weeks): many batches, fills keep flowing.
        load = FillLoad(settings)
        load.start()
        time.sleep(2)
        backlog_start = time.monotonic()
        elapsed, out = run_bin(settings, "cleanup-snapshots", "--batch-size", "5000",
                               retention=days - 1 - backlog_days)
        backlog_end = time.monotonic()
        load.stop.set()
        load.join()
        during = percentiles(load.between(backlog_start, backlog_end) or [0.0])
        figures.update(backlog_cleanup_seconds=elapsed, fills_during_backlog_cleanup=during)
        print(f"   backlog of {backlog_days} more days: {ms(elapsed)}   [{out}]")
        print(f"   fills during backlog cleanup: {fmt_pct(during)}")

    load = FillLoad(settings)
    load.start()
    time.sleep(3)
    validate_start = time.monotonic()
    elapsed, out = run_bin(settings, "validate-positions", ok=(0, 3))
    validate_end = time.monotonic()
    load.stop.set()
    load.join()
    during = percentiles(load.between(validate_start, validate_end) or [0.0])
    figures.update(validate_seconds=elapsed, fills_during_validation=during)
    print(f"3. bin/validate-positions of {POSITIONS} positions: {ms(elapsed)}   [{out}]")
    print(f"   fills during validation: {fmt_pct(during)}")

    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        asset = ASSETS[POSITIONS // 2]
        newest = timed(conn, "SELECT pm.list_snapshots(%s, 'one-way', 100, 0, NULL, NULL)", (asset,), 50)
        week = timed(conn, "SELECT pm.list_snapshots(%s, 'one-way', 1000, 0, now() - interval '14 days', "
                           "now() - interval '7 days')", (asset,), 50)
        deep = timed(conn, "SELECT pm.list_snapshots(%s, 'one-way', 100, %s, NULL, NULL)",
                     (asset, max(0, days * 24 - 200)), 20)
        grafana_day = timed(conn, "SELECT floor(extract(epoch from snapshot_timestamp)/300)*300 AS time, "
                                  "avg(total_exposure_usdt), avg(total_pnl_usdt) FROM pm.v_portfolio_history "
                                  "WHERE snapshot_timestamp BETWEEN (now() AT TIME ZONE 'UTC') - interval '1 day' "
                                  "AND (now() AT TIME ZONE 'UTC') GROUP BY 1 ORDER BY 1", (), 10)
        grafana_week = timed(conn, "SELECT floor(extract(epoch from snapshot_timestamp)/3600)*3600 AS time, "
                                   "avg(total_exposure_usdt), avg(total_pnl_usdt) FROM pm.v_portfolio_history "
                                   "WHERE snapshot_timestamp BETWEEN (now() AT TIME ZONE 'UTC') - interval '7 days' "
                                   "AND (now() AT TIME ZONE 'UTC') GROUP BY 1 ORDER BY 1", (), 5)
    figures.update(history_newest_100=newest, history_one_week=week, history_deep_page=deep,
                   grafana_portfolio_24h=grafana_day, grafana_portfolio_7d=grafana_week)
    print(f"4. snapshot history of one position (pm.list_snapshots):")
    print(f"   newest 100:               {fmt_pct(newest)}")
    print(f"   one week window (168):    {fmt_pct(week)}")
    print(f"   page at offset {max(0, days * 24 - 200)}:       {fmt_pct(deep)}")
    print(f"   Grafana portfolio history, 24 h: {fmt_pct(grafana_day)}")
    print(f"   Grafana portfolio history, 7 d:  {fmt_pct(grafana_week)}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365, help="days of hourly snapshots (default 365 = 4.38 M rows)")
    parser.add_argument("--backlog-days", type=int, default=30,
                        help="then clean up this many more days at once, under fills (default 30; 0: skip)")
    parser.add_argument("--no-data", action="store_true", help="generate snapshots without snapshot_data")
    parser.add_argument("--dbname", default="pm_bench_snapshots")
    parser.add_argument("--keep", action="store_true", help="keep the database (and reuse it when it exists)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.days < 2:
        parser.error("--days must be >= 2")
    base = settings_mod.load()
    settings = base.with_overrides(postgres_db=args.dbname)
    with psycopg.connect(**base.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (args.dbname,)).fetchone()
        if exists and not args.keep:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(args.dbname)))
            exists = None
    try:
        if not exists:
            print(f"generating {args.days} days x {POSITIONS} positions of hourly snapshots in {args.dbname}")
            setup_database(settings, args.days, not args.no_data)
        figures = measure(settings, args.days, min(args.backlog_days, args.days - 3))
        figures.update(days=args.days, positions=POSITIONS, snapshot_data=not args.no_data)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        if not args.keep:
            with psycopg.connect(**base.conninfo("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.dbname)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
