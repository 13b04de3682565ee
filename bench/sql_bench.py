#!/usr/bin/env python3
"""SQL core benchmark: executions/s through pm.apply_order_event on one connection.

Measured in one run, on a fresh database migrated from sql/:
  * PostgreSQL's own `pgbench -b simple-update`, one client (the reference: one small
    read-write transaction per commit on this machine's disk);
  * pm.apply_order_event committing every k executions (k = 1 and k = 100), plain calls and
    psycopg pipeline mode (no round trip wait per call), and for comparison pm.apply_batch with
    100 executions per call (the consumers' path: one write per position per batch);
  * the same against a second database whose ledger holds --ledger-rows executions more (default
    one million), to show that the cost of a fill does not grow with history. The two databases
    take turns, run by run, so that a slow spell of the machine hits both alike.

    bench/sql_bench.py                 # full run, every figure the median of 3 (about 8 minutes)
    bench/sql_bench.py --n 5000 --ledger-rows 100000 --pgbench-seconds 5 --repeat 1   # quick look

Prints a table; --json FILE also writes the figures for bench/report.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_mod  # noqa: E402
from jobs import migrate  # noqa: E402

ASSETS = [f"B{i:02d}USDT" for i in range(50)]
APPLY = "SELECT pm.apply_order_event(%s::jsonb)"


def executions(n: int, start: datetime, prefix: str, seed: int = 7):
    """n realistic per-execution events (shape A) over 50 assets, in time order."""
    rnd = random.Random(seed)
    prices = {a: Decimal(rnd.randint(100, 60000)) for a in ASSETS}
    for i in range(n):
        asset = ASSETS[i % len(ASSETS)]
        prices[asset] = (prices[asset] * Decimal(1 + rnd.uniform(-0.002, 0.002))).quantize(Decimal("0.01"))
        qty = Decimal(rnd.randint(1, 500)) / 100
        yield json.dumps({
            "event_id": f"{prefix}-{i}", "event_type": "order_executed", "execution_id": f"{prefix}-{i}",
            "order_id": f"{prefix}-o{i // 3}", "asset": asset, "side": rnd.choice(("Buy", "Sell")),
            "execution_quantity": str(qty), "execution_price": str(prices[asset]),
            "execution_fees": str((qty * prices[asset] * Decimal("0.00055")).quantize(Decimal("0.00000001"))),
            "executed_at": (start + timedelta(milliseconds=i)).isoformat(),
        })


def apply_rate(conn: psycopg.Connection, events: list[str], k: int, pipeline: bool | str) -> float:
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(0, len(events), k):
            chunk = events[i:i + k]
            if pipeline == "batch":
                # the consumers' path: one pm.apply_batch call per k executions
                cur.execute("SELECT pm.apply_batch('order', %s::jsonb, false)", ("[" + ",".join(chunk) + "]",))
            elif pipeline:
                with conn.pipeline():
                    for ev in chunk:
                        cur.execute(APPLY, (ev,))
            else:
                for ev in chunk:
                    cur.execute(APPLY, (ev,))
            conn.commit()
    return len(events) / (time.perf_counter() - t0)


def pgbench_tps(settings, seconds: int) -> float | None:
    exe = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not os.path.exists(exe):
        return None
    db = "pm_bench_pgbench"
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    env = dict(os.environ, PGPASSWORD=settings.postgres_password or "")
    base = [exe, "-h", settings.postgres_host, "-p", str(settings.postgres_port), "-U", settings.postgres_user]
    subprocess.run(base + ["-i", "-q", db], check=True, capture_output=True, env=env)
    out = subprocess.run(base + ["-b", "simple-update", "-c", "1", "-T", str(seconds), db],
                         check=True, capture_output=True, text=True, env=env).stdout
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(db)))
    for line in out.splitlines():
        if line.startswith("tps"):
            return float(line.split("=")[1].split()[0])
    return None


def grow_ledger(conn: psycopg.Connection, rows: int) -> None:
    """Add `rows` historical ledger rows, older than anything benchmarked, spread over the
    benchmark's 50 positions and 950 other ones (set-based: a real fold of a million fills
    through the function would take minutes and measure the same thing)."""
    conn.execute("""
        INSERT INTO public.positions (asset, mode, size, realized_pnl, unrealized_pnl, version, created_at)
        SELECT a, 'one-way', 0, 0, 0, 1, now()
          FROM (SELECT 'H' || lpad(g::text, 4, '0') || 'USDT' FROM generate_series(1, 950) g
                UNION ALL SELECT unnest(%s::text[])) AS n(a)
            ON CONFLICT DO NOTHING""", (ASSETS,))
    conn.execute("""
        INSERT INTO pm.executions (position_id, exec_key, kind, source, side, qty, price, fee, exec_time,
                                   state_after)
        SELECT ids.a[1 + g %% array_length(ids.a, 1)], 'hist-' || g, 'trade', 'order_execution',
               CASE WHEN g %% 2 = 0 THEN 'Buy' ELSE 'Sell' END,
               1, 100 + (g %% 50), 0.01, timestamptz '2020-01-01' + g * interval '1 millisecond',
               ROW(0, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL)::pm.pos_state
          FROM generate_series(1, %s) g,
               (SELECT array_agg(id ORDER BY asset) AS a FROM public.positions) ids""",
                 (rows,))
    conn.commit()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="executions per measurement (default 20000)")
    ap.add_argument("--ledger-rows", type=int, default=1_000_000)
    ap.add_argument("--pgbench-seconds", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each measurement (and of pgbench); the median is reported (default 3)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    settings = settings_mod.load()
    # two databases of the same cluster: one starts empty, the other holds the grown ledger; the
    # measurements alternate between them, so that the machine's slow spells (checkpoints,
    # autovacuum, neighbours) hit both sides alike
    dbs = {"empty": f"pm_bench_sql_{os.getpid()}_empty", "1m": f"pm_bench_sql_{os.getpid()}_1m"}
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as c:
        for dbname in dbs.values():
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    conns: dict[str, psycopg.Connection] = {}
    try:
        for dbname in dbs.values():
            migrate.apply(settings, dbname)
        results: dict[str, float | None] = {}
        print(f"pgbench simple-update, 1 client, {args.repeat} x {args.pgbench_seconds}s ...", file=sys.stderr)
        runs_of: dict[str, list[float]] = {}
        runs_of["pgbench_simple_update_tps"] = [pgbench_tps(settings, args.pgbench_seconds) for _ in range(args.repeat)]

        conns = {phase: psycopg.connect(**settings.conninfo(dbname)) for phase, dbname in dbs.items()}
        print(f"growing the ledger by {args.ledger_rows} rows ...", file=sys.stderr)
        grow_ledger(conns["1m"], args.ledger_rows)
        with psycopg.connect(**settings.conninfo(dbs["1m"]), autocommit=True) as c2:
            c2.execute("VACUUM (ANALYZE) pm.executions")
            c2.execute("VACUUM (ANALYZE) public.positions")
            c2.execute("CHECKPOINT")   # the bulk insert's dirty pages: not billed to the next run
        t = datetime(2026, 1, 1, tzinfo=timezone.utc)
        runs = [("k1", 1, False), ("k100", 100, False), ("k100_pipeline", 100, True), ("k100_apply_batch", 100, "batch")]
        n_small = max(1, args.n // 10)   # k = 1 pays one fsync per execution: fewer of them
        for rep in range(args.repeat):
            for name, k, pipe in runs:
                n = n_small if k == 1 else args.n
                for phase, conn in conns.items():
                    evs = list(executions(n, t, f"{phase}-{name}-{rep}"))
                    print(f"#{rep + 1} {phase}: {name}, {n} executions ...", file=sys.stderr)
                    runs_of.setdefault(f"{phase}_{name}_per_s", []).append(apply_rate(conn, evs, k, pipe))
                t += timedelta(days=1)
        results["ledger_rows_at_end"] = conns["1m"].execute("SELECT count(*) FROM pm.executions").fetchone()[0]
    finally:
        for conn in conns.values():
            conn.close()
        with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as c:
            for dbname in dbs.values():
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))

    for key, values in runs_of.items():
        results[key] = statistics.median(v or 0 for v in values)
    ref = results["pgbench_simple_update_tps"]
    print()
    print(f"{'measurement (median of ' + str(args.repeat) + ')':44} {'per second':>12} {'x pgbench':>10}   runs")
    for key, values in runs_of.items():
        value = results[key]
        ratio = f"{value / ref:10.2f}" if ref and value and key != "pgbench_simple_update_tps" else " " * 10
        print(f"{key:44} {value:12.0f} {ratio}   {' '.join(f'{v or 0:.0f}' for v in values)}")
    for name, _, _ in runs:
        a, b = results[f"empty_{name}_per_s"], results[f"1m_{name}_per_s"]
        print(f"rate at {results['ledger_rows_at_end']} ledger rows vs empty ({name}): {100 * b / a:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results, runs=runs_of), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
