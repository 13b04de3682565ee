#!/usr/bin/env python3
"""Snapshots, retention and validation at a year's scale, and what they cost the fills meanwhile.

On a database of its own (created and migrated from sql/, dropped at the end unless --keep):
  * 500 open positions (real fills through pm.apply_order_event, prices through pm.set_prices);
  * hourly snapshots of all of them for --days days (365 -> 4.38 M rows), generated with
    INSERT ... SELECT generate_series (not through the API), with a snapshot_data JSON like the
    real one (--no-data: without it);
then measures
  1. the snapshot-history query of one position (pm.list_snapshots, what
     GET /positions/{asset}/snapshots runs): newest 100, a one-week window, a page deep in history;
     and the Grafana portfolio-history panel over 24 h and 7 days (before any job deletes history);
  2. one `bin/snapshot` (the real job as cron runs it: process start, lock, pm.snapshot_all);
  3. one `bin/cleanup-snapshots` deleting the oldest day (12,000 rows) while another connection
     keeps applying fills, with the fill latency percentiles before and during the cleanup; then a
     backlog of --backlog-days more days (many batches) under the same load;
  4. one `bin/validate-positions` of the 500 positions, with the fill latency during it.

    bench/run snapshot                  # full scale, 365 days (generating them takes 5-6 minutes here)
    bench/run snapshot --days 30        # quick look (about a minute)

The reference of each fill-latency figure is the fill latency measured just before, in the same
run, with nothing else running. Writes bench/results/snapshot.json (--json FILE elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from app import db as appdb  # noqa: E402
from app import settings as settings_mod  # noqa: E402
from bench import common  # noqa: E402
from bench.common import ROOT, figure, percentiles, q, reference  # noqa: E402

POSITIONS = 500
ASSETS = [f"S{i:03d}USDT" for i in range(POSITIONS)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def fmt_pct(p: dict[str, float]) -> str:
    return f"n={p['n']}, p50 {ms(p['p50'])}, p95 {ms(p['p95'])}, p99 {ms(p['p99'])}, max {ms(p['max'])}"


def fill_event(asset: str, side: str, qty: str, price: str) -> str:
    key = str(uuid.uuid4())
    return json.dumps({"event_id": key, "event_type": "order_executed", "execution_id": key, "order_id": key,
                       "asset": asset, "side": side, "execution_quantity": qty, "execution_price": price,
                       "execution_fees": "0.01", "executed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def setup_database(settings, days: int, with_data: bool) -> None:
    common.fresh_database(settings, settings.postgres_db)
    rnd = random.Random(5)
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        started = time.monotonic()
        prices = {}
        with conn.pipeline():
            for asset in ASSETS:
                price = rnd.randint(1, 60000)
                prices[asset] = str(price)
                conn.execute(appdb.q("apply_order_event"), {"event": fill_event(
                    asset, rnd.choice(("Buy", "Sell")), str(rnd.randint(1, 100)), str(price))})
        conn.execute(appdb.q("job_set_prices"), {"prices": json.dumps(prices), "trace": "bench", "actor": "bench"})
        print(f"  {POSITIONS} positions: {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        # One day per statement: progress, and no single giant transaction.
        for day in range(days, 0, -1):
            conn.execute(q("snapshot_generate_day"), {"day": day, "with_data": with_data})
            if day % 30 == 0:
                print(f"  snapshots: {days - day + 1}/{days} days, {time.monotonic() - started:.0f} s", flush=True)
        conn.execute(q("snapshot_vacuum"))
        rows, size = conn.execute(q("snapshot_table_size")).fetchone()
        print(f"  {rows:,} snapshot rows ({size / 2**20:,.0f} MB with indexes) generated in {time.monotonic() - started:.0f} s")


def job_env(settings) -> dict[str, str]:
    return common.service_env(settings, clean=True, POSITION_MANAGER_LOG_LEVEL="WARNING")


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
                    conn.execute(appdb.q("apply_order_event"), {"event": event})
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


def under_load(settings, warm_up: float, action) -> tuple[object, dict, dict]:
    """Fills back to back on their own connection; after `warm_up` seconds alone (the baseline),
    `action()` runs. Returns its result, the fill latency percentiles before and during it."""
    load = FillLoad(settings)
    load.start()
    time.sleep(warm_up)
    start = time.monotonic()
    try:
        result = action()
    finally:
        end = time.monotonic()
        load.stop.set()
        load.join()
    if load.error:
        raise SystemExit(f"fill load failed: {load.error}")
    return result, percentiles(load.between(start - warm_up, start)), percentiles(load.between(start, end))


def measure(settings, days: int, backlog_days: int) -> tuple[list[dict], dict]:
    detail: dict = {}
    figures: list[dict] = []

    def fills(key: str, label: str, during: dict, baseline: dict) -> None:
        detail[key] = during
        figures.append(figure(key, f"fill latency p99 {label}", during["p99"] * 1000, "ms", p50_ms=during["p50"] * 1000,
                              max_ms=during["max"] * 1000, n=during["n"],
                              reference=reference("fill latency p99 just before, fills alone", baseline["p99"] * 1000, "ms")))

    asset = ASSETS[POSITIONS // 2]
    page = {"asset": asset, "mode": "one-way", "limit": 100, "offset": 0, "from": None, "to": None}
    deep_offset = max(0, days * 24 - 200)
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        timings = {
            "history_newest_100": ("snapshot history of one position, newest 100 (GET .../snapshots)",
                                   timed(conn, appdb.q("api_list_snapshots"), page, 50)),
            "history_one_week": ("the same, a one-week window (168 rows)",
                                 timed(conn, q("snapshot_history_window"), {"asset": asset}, 50)),
            "history_deep_page": (f"the same, a page of 100 at offset {deep_offset}",
                                  timed(conn, appdb.q("api_list_snapshots"), page | {"offset": deep_offset}, 20)),
            "grafana_portfolio_24h": ("Grafana portfolio history panel, 24 hours",
                                      timed(conn, q("grafana_portfolio_history"), {"bucket": 300, "hours": 24}, 10)),
            "grafana_portfolio_7d": ("Grafana portfolio history panel, 7 days",
                                     timed(conn, q("grafana_portfolio_history"), {"bucket": 3600, "hours": 168}, 5)),
        }
    print("1. reads, before any job deletes history:")
    for key, (label, p) in timings.items():
        detail[key] = p
        figures.append(figure(key, f"{label}, p50", p["p50"] * 1000, "ms", p99_ms=p["p99"] * 1000, n=p["n"]))
        print(f"   {label}: {fmt_pct(p)}")

    elapsed, out = run_bin(settings, "snapshot")
    figures.append(figure("bin_snapshot", f"bin/snapshot of {POSITIONS} positions (process start to exit)",
                          elapsed * 1000, "ms"))
    print(f"2. bin/snapshot (process start to exit): {ms(elapsed)}   [{out}]")

    (elapsed, out), baseline, during = under_load(settings, 5, lambda: run_bin(
        settings, "cleanup-snapshots", "--batch-size", "5000", retention=days - 1))
    detail["fills_baseline"] = baseline
    figures.append(figure("cleanup_day", "bin/cleanup-snapshots of one day's snapshots", elapsed * 1000, "ms"))
    fills("fills_during_cleanup", "during that cleanup", during, baseline)
    print(f"3. bin/cleanup-snapshots of one day: {ms(elapsed)}   [{out}]")
    print(f"   fills before cleanup: {fmt_pct(baseline)}")
    print(f"   fills during cleanup: {fmt_pct(during)}")

    if backlog_days:
        # A backlog (retention lowered, or cleanup not run for weeks): many batches, fills keep flowing.
        (elapsed, out), baseline, during = under_load(settings, 2, lambda: run_bin(
            settings, "cleanup-snapshots", "--batch-size", "5000", retention=days - 1 - backlog_days))
        figures.append(figure("cleanup_backlog", f"bin/cleanup-snapshots of a backlog of {backlog_days} days",
                              elapsed * 1000, "ms"))
        fills("fills_during_backlog_cleanup", "during the backlog cleanup", during, baseline)
        print(f"   backlog of {backlog_days} more days: {ms(elapsed)}   [{out}]")
        print(f"   fills during backlog cleanup: {fmt_pct(during)}")

    (elapsed, out), baseline, during = under_load(settings, 3, lambda: run_bin(
        settings, "validate-positions", ok=(0, 3)))
    figures.append(figure("validate", f"bin/validate-positions of {POSITIONS} positions", elapsed * 1000, "ms"))
    fills("fills_during_validation", "during validation", during, baseline)
    print(f"4. bin/validate-positions of {POSITIONS} positions: {ms(elapsed)}   [{out}]")
    print(f"   fills during validation: {fmt_pct(during)}")

    return figures, detail


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run snapshot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=365, help="days of hourly snapshots (default 365 = 4.38 M rows)")
    ap.add_argument("--backlog-days", type=int, default=30,
                    help="then clean up this many more days at once, under fills (default 30; 0: skip)")
    ap.add_argument("--no-data", action="store_true", help="generate snapshots without snapshot_data")
    ap.add_argument("--keep", action="store_true", help="keep the database pm_bench_snapshots (and reuse it when it exists)")
    common.add_json_option(ap, "snapshot")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.days < 4:
        ap.error("--days must be >= 4")
    base = settings_mod.load()
    dbname = "pm_bench_snapshots" if args.keep else f"pm_bench_snapshots_{os.getpid()}"
    settings = base.with_overrides(postgres_db=dbname)
    with psycopg.connect(**base.conninfo("postgres"), autocommit=True) as conn:
        exists = args.keep and conn.execute(q("database_exists"), (dbname,)).fetchone()
    try:
        if not exists:
            print(f"generating {args.days} days x {POSITIONS} positions of hourly snapshots in {dbname}")
            setup_database(settings, args.days, not args.no_data)
        figures, detail = measure(settings, args.days, min(args.backlog_days, args.days - 3))
    finally:
        if not args.keep:
            common.drop_database(base, dbname)
    path = common.write_result("snapshot", command=common.explicit_command("snapshot", ap, args), path=args.json,
                               params=vars(args) | {"positions": POSITIONS, "snapshot_rows": args.days * 24 * POSITIONS},
                               figures=figures, detail=detail)
    print(f"(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
