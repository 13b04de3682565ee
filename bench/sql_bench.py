#!/usr/bin/env python3
"""SQL core benchmark: executions/s through pm.apply_order_event on one connection.

Measured in one run, on databases migrated from sql/:
  * PostgreSQL's own `pgbench -b simple-update`, one client: the reference (one small read-write
    transaction per commit on this machine's disk);
  * pm.apply_order_event committing every k executions (k = 1 and k = 100), with one round trip
    per call and in psycopg pipeline mode (the calls sent without waiting for each result), and
    pm.apply_batch with 100 executions per call (the consumers' path: one write per position per
    batch);
  * the same against a second database whose ledger holds --ledger-rows executions more, to show
    that the cost of a fill does not grow with history;
  * the same against a third, empty database without foreign-write detection (the trigger of
    public.positions dropped, the own-write marker a no-op): the cost of the detection on the fill
    path. The three databases take turns, run by run, so that a slow spell of the machine hits
    all alike;
  * --ties executions of ONE position that share one execution time (random execution ids, one
    call each, commit every 100), beside the same executions with distinct times (1 ms apart) on
    another position of the same database, measured in turns (which goes first alternates).
Every figure is the median of --repeat runs.

    bench/run sql                                                         # full run (about 8 minutes)
    bench/run sql --n 5000 --ledger-rows 100000 --pgbench-seconds 5 --repeat 1   # quick look

Writes bench/results/sql.json (--json FILE elsewhere).
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
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from app import settings as settings_mod  # noqa: E402
from bench import common  # noqa: E402
from bench.common import figure, q, reference  # noqa: E402

ASSETS = [f"B{i:02d}USDT" for i in range(50)]
# (key, label, commit every k, how the calls are sent)
RUNS = [("k1", "pm.apply_order_event, commit every execution", 1, "plain"),
        ("k100", "pm.apply_order_event, commit every 100", 100, "plain"),
        ("k100_pipeline", "pm.apply_order_event, commit every 100, pipelined", 100, "pipeline"),
        ("k100_apply_batch", "pm.apply_batch, 100 executions per call and commit (the consumers' path)", 100, "batch")]


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


def one_position_executions(n: int, start: datetime, asset: str, seed: int, same_time: bool) -> list[str]:
    """n executions (shape A) of one position, random execution ids (like Bybit's UUIDs), both
    sides; all at `start` when same_time, else 1 ms apart."""
    rnd = random.Random(seed)
    price, out = Decimal(30000), []
    for i in range(n):
        price = (price * Decimal(1 + rnd.uniform(-0.001, 0.001))).quantize(Decimal("0.01"))
        qty = Decimal(rnd.randint(1, 500)) / 1000
        key = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        out.append(json.dumps({
            "event_id": key, "event_type": "order_executed", "execution_id": key, "order_id": f"{asset}-o{i // 3}",
            "asset": asset, "side": rnd.choice(("Buy", "Sell")), "execution_quantity": str(qty),
            "execution_price": str(price),
            "execution_fees": str((qty * price * Decimal("0.00055")).quantize(Decimal("0.00000001"))),
            "executed_at": (start if same_time else start + timedelta(milliseconds=i)).isoformat(),
        }))
    return out


MIN_CPU_TICKS = 20   # a CPU time of fewer clock ticks is not reported (resolution 1 tick: 5% or better)


def apply_rate(conn: psycopg.Connection, events: list[str], k: int, how: str) -> tuple[float, float | None]:
    """(executions per second, CPU microseconds of the database backend per execution). The CPU time
    is measured on the server's process (/proc; None when the server is not local): unlike the rate,
    it hardly moves when other work shares the machine. /proc counts CPU time in clock ticks (10 ms):
    a run that used fewer than MIN_CPU_TICKS of them is too short to say, and its CPU time is None."""
    backend = conn.info.backend_pid
    cpu0 = common.cpu_seconds(backend)
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(0, len(events), k):
            chunk = events[i:i + k]
            if how == "batch":
                cur.execute(q("sql_apply_batch"), ("[" + ",".join(chunk) + "]",))
            elif how == "pipeline":
                with conn.pipeline():
                    for ev in chunk:
                        cur.execute(q("sql_apply_order_event"), (ev,))
            else:
                for ev in chunk:
                    cur.execute(q("sql_apply_order_event"), (ev,))
            conn.commit()
    rate = len(events) / (time.perf_counter() - t0)
    cpu1 = common.cpu_seconds(backend)
    if cpu0 is None or cpu1 is None or cpu1 - cpu0 < MIN_CPU_TICKS / common.CLK_TCK:
        return rate, None
    return rate, (cpu1 - cpu0) * 1e6 / len(events)


def pgbench_tps(settings, seconds: int) -> float | None:
    exe = shutil.which("pgbench") or str(common.PG_BIN / "pgbench")
    if not os.path.exists(exe):
        return None
    db = f"pm_bench_pgbench_{os.getpid()}"
    common.create_database(settings, db)          # pgbench's own tables, not migrated
    env = dict(os.environ, PGPASSWORD=settings.postgres_password or "")
    base = [exe, "-h", settings.postgres_host, "-p", str(settings.postgres_port), "-U", settings.postgres_user]
    try:
        subprocess.run(base + ["-i", "-q", db], check=True, capture_output=True, env=env)
        out = subprocess.run(base + ["-b", "simple-update", "-c", "1", "-T", str(seconds), db],
                             check=True, capture_output=True, text=True, env=env).stdout
    finally:
        common.drop_database(settings, db)
    for line in out.splitlines():
        if line.startswith("tps"):
            return float(line.split("=")[1].split()[0])
    return None


def grow_ledger(conn: psycopg.Connection, rows: int) -> None:
    """Add `rows` historical ledger rows, older than anything benchmarked, spread over the
    benchmark's 50 positions and 950 other ones."""
    conn.execute(q("sql_grow_ledger_positions"), {"assets": ASSETS})
    conn.execute(q("sql_grow_ledger_rows"), {"rows": rows})
    conn.commit()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run sql", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="executions per measurement (default 20000; k = 1: n/10)")
    ap.add_argument("--ledger-rows", type=int, default=1_000_000)
    ap.add_argument("--pgbench-seconds", type=int, default=15)
    ap.add_argument("--ties", type=int, default=2000,
                    help="executions of one position sharing one time (and, as reference, with distinct times)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each measurement (and of pgbench); the median is reported (default 3)")
    common.add_json_option(ap, "sql")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    settings = settings_mod.load()
    # three databases of the same cluster: one starts empty, one holds the grown ledger, one starts
    # empty without foreign-write detection
    dbs = {"empty": f"pm_bench_sql_{os.getpid()}_empty", "grown": f"pm_bench_sql_{os.getpid()}_grown",
           "bare": f"pm_bench_sql_{os.getpid()}_bare"}
    conns: dict[str, psycopg.Connection] = {}
    runs_of: dict[str, list[float]] = {}
    cpu_of: dict[str, list[float]] = {}
    try:
        for dbname in dbs.values():
            common.fresh_database(settings, dbname)
        print(f"pgbench simple-update, 1 client, {args.repeat} x {args.pgbench_seconds}s ...", file=sys.stderr)
        runs_of["pgbench"] = [pgbench_tps(settings, args.pgbench_seconds) or 0.0 for _ in range(args.repeat)]

        conns = {phase: psycopg.connect(**settings.conninfo(dbname)) for phase, dbname in dbs.items()}
        conns["bare"].execute(q("sql_without_foreign_write_detection"))
        conns["bare"].commit()
        print(f"growing the ledger by {args.ledger_rows} rows ...", file=sys.stderr)
        grow_ledger(conns["grown"], args.ledger_rows)
        with psycopg.connect(**settings.conninfo(dbs["grown"]), autocommit=True) as c2:
            for name in ("sql_vacuum_ledger", "sql_vacuum_positions", "sql_checkpoint"):
                c2.execute(q(name))
        t = datetime(2026, 1, 1, tzinfo=timezone.utc)
        n_small = max(1, args.n // 10)   # k = 1 pays one fsync per execution: fewer of them
        for rep in range(args.repeat):
            for key, _, k, how in RUNS:
                n = n_small if k == 1 else args.n
                for phase, conn in conns.items():
                    evs = list(executions(n, t, f"{phase}-{key}-{rep}"))
                    print(f"#{rep + 1} {phase}: {key}, {n} executions ...", file=sys.stderr)
                    rate, cpu_us = apply_rate(conn, evs, k, how)
                    runs_of.setdefault(f"{phase}_{key}", []).append(rate)
                    if cpu_us is not None:
                        cpu_of.setdefault(f"{phase}_{key}", []).append(cpu_us)
                t += timedelta(days=1)
            # equal times beside distinct ones, one position each, on the empty database
            for key, same_time in sorted((("ties_distinct", False), ("ties_equal", True)), reverse=rep % 2 == 1):
                evs = one_position_executions(args.ties, t, f"T{rep}{key[5:].upper()}USDT", 11 + rep, same_time)
                print(f"#{rep + 1} empty: {key}, {args.ties} executions of one position ...", file=sys.stderr)
                runs_of.setdefault(key, []).append(apply_rate(conns["empty"], evs, 100, "plain")[0])
            t += timedelta(days=1)
        ledger_rows = conns["grown"].execute(q("ledger_rows")).fetchone()[0]
    finally:
        for conn in conns.values():
            conn.close()
        for dbname in dbs.values():
            common.drop_database(settings, dbname)

    median = {key: statistics.median(values) for key, values in runs_of.items()}
    pgbench = median["pgbench"] or None
    ref = reference("pgbench -b simple-update, 1 client", pgbench, "transactions/s")
    figures = [figure("pgbench", "pgbench -b simple-update, 1 client (the reference)", pgbench, "transactions/s")]
    for key, label, _, _ in RUNS:
        figures.append(figure(f"empty_{key}", label, median[f"empty_{key}"], "executions/s", reference=ref))
    distinct = reference(f"the same {args.ties:,} executions with distinct times (1 ms apart), one position, "
                         "commit every 100", median["ties_distinct"], "executions/s")
    figures.append(figure("ties_distinct", f"{args.ties:,} executions of one position, distinct times, one call each, "
                          "commit every 100", median["ties_distinct"], "executions/s"))
    figures.append(figure("ties_equal", f"{args.ties:,} executions of one position sharing ONE time, one call each, "
                          "commit every 100", median["ties_equal"], "executions/s", reference=distinct))
    for key, label, _, _ in RUNS:
        figures.append(figure(f"grown_{key}", f"{label}, {ledger_rows:,} ledger rows", median[f"grown_{key}"],
                              "executions/s", reference=reference(f"{label}, empty ledger",
                                                                   median[f"empty_{key}"], "executions/s")))
    cpu = {key: statistics.median(values) for key, values in cpu_of.items()}
    for key, label, _, _ in RUNS:
        figures.append(figure(f"bare_{key}", f"{label}, without foreign-write detection", median[f"bare_{key}"],
                              "executions/s", reference=reference(f"{label}, with foreign-write detection",
                                                                   median[f"empty_{key}"], "executions/s")))
    for key, label, _, _ in RUNS:
        if f"empty_{key}" in cpu and f"bare_{key}" in cpu:
            figures.append(figure(f"cpu_empty_{key}", f"{label}: database CPU per execution, with foreign-write "
                                  "detection", cpu[f"empty_{key}"], "µs", reference=reference(
                                      f"{label}: database CPU per execution, without", cpu[f"bare_{key}"], "µs")))
    path = common.write_result("sql", command=common.explicit_command("sql", ap, args), params=vars(args),
                               figures=figures, detail={"ledger_rows_at_end": ledger_rows, "runs": runs_of,
                                                       "cpu_us_per_execution": cpu_of},
                               path=args.json)
    print(f"\n{'measurement (median of ' + str(args.repeat) + ')':72} {'per second':>11} {'x ref':>7}")
    for f in figures:
        ratio = f"{f['value'] / f['reference']['value']:7.2f}" if f["reference"] and f["reference"]["value"] else ""
        print(f"{f['label']:72} {f['value'] or 0:11,.0f} {ratio}")
    print(f"(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
