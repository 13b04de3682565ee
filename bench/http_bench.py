#!/usr/bin/env python3
"""HTTP benchmark of the REST API under gunicorn: requests/s, latency and server CPU per request.

A fresh database with N open positions (default 500, loaded through pm.apply_order_event and
priced through pm.set_prices), bin/serve with auth and the shared rate limit ON (a limit out of
reach, as a service's key has: every request is admitted by the bucket in PostgreSQL, its tokens
leased a few at a time per process, docs/security.md), and for each endpoint
requests/s and p50/p99 latency at 1 and 8 persistent connections, beside GET /bench/select1: the
reference, one `SELECT 1` through the same middleware and pool (key check, no rate limit: the least
a request can cost), enabled by POSITION_MANAGER_BENCH_REFERENCE=1. So an endpoint's share of the
reference includes what its rate limit costs.

    bench/run http                 # ~2 minutes
    bench/run http --rounds 5 --duration 5 --workers 4 --threads 4

Load generator: wrk (apt-get install wrk) when installed, else a Python client (http.client,
one keep-alive connection per thread; slower, so figures are lower and noisier). The endpoints
are measured in interleaved rounds and medians reported. Besides requests/s (at the mercy of
whatever else runs on the machine), each cell reports the server CPU per request: user+system
time of the gunicorn processes and of their PostgreSQL backends, divided by the requests served;
on a CPU-bound box, throughput is inversely proportional to it, and it hardly moves with outside
load. It also times, on a direct connection, the SQL that renders the positions list
(pm.list_positions_text, all N positions) beside reading the same rows unrendered, as the server
executes it and as the client waits for it. Writes
bench/results/http.json (--json FILE elsewhere).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from app.api.keys import new_key  # noqa: E402
from app.db import q  # noqa: E402
from app.settings import load  # noqa: E402
from bench import common  # noqa: E402
from bench.common import figure, reference  # noqa: E402

API_KEY = new_key()   # a fresh random key per run (the API refuses short or placeholder keys)
ENDPOINTS = [
    ("SELECT 1 (reference)", "/bench/select1"),
    ("/api/v1/positions/{asset}", "/api/v1/positions/{asset}"),      # one of the open positions
    ("/api/v1/portfolio", "/api/v1/portfolio"),
    ("/api/v1/positions", "/api/v1/positions"),
    ("/health", "/health"),
]


def prepare_database(settings, dbname: str, positions: int) -> None:
    common.fresh_database(settings, dbname)
    prices = {}
    with psycopg.connect(**settings.conninfo(dbname)) as conn:
        for i in range(positions):
            asset = f"BENCH{i:04d}USDT"
            price = 10 + i
            event = {"event_id": str(uuid.uuid4()), "event_type": "order_executed", "execution_id": str(uuid.uuid4()),
                     "order_id": str(uuid.uuid4()), "asset": asset, "side": "Buy" if i % 3 else "Sell",
                     "execution_quantity": str(1 + i % 7), "execution_price": str(price), "execution_fees": "0.01",
                     "executed_at": "2025-01-27T10:00:00Z"}
            conn.execute(q("apply_order_event"), {"event": json.dumps(event)})
            prices[asset] = str(price * 1.01)
        conn.execute(q("job_set_prices"), {"prices": json.dumps(prices), "trace": "bench", "actor": "bench"})
        conn.commit()
        conn.execute(common.q("analyze"))


def start_server(settings, dbname: str, workers: int, threads: int, log_dir: Path) -> tuple[common.Service, str]:
    env = common.service_env(settings.with_overrides(postgres_db=dbname), **{
        "POSITION_MANAGER_API_KEY": API_KEY,
        "POSITION_MANAGER_RATE_LIMIT_ENABLED": "true", "POSITION_MANAGER_RATE_LIMIT_DEFAULT": "1000000000",
        "POSITION_MANAGER_API_WORKERS": str(workers), "POSITION_MANAGER_API_THREADS": str(threads),
        "POSITION_MANAGER_BENCH_REFERENCE": "1", "POSITION_MANAGER_LOG_LEVEL": "INFO"})
    return common.start_api(env, log_dir, name="http_bench_gunicorn", timeout=30)


# ------------------------------------------------------------------ server CPU per request

def server_pids(master_pid: int, admin: psycopg.Connection, dbname: str) -> list[int]:
    """The gunicorn master and workers, and the PostgreSQL backends connected to the bench database."""
    pids = [master_pid] + [pid for pid, _ in common.children_of(master_pid)]
    rows = admin.execute(common.q("database_backends"), (dbname,)).fetchall()
    return pids + [pid for (pid,) in rows]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user + system CPU of each process (a process that is gone counts as 0)."""
    return {pid: common.cpu_seconds(pid) or 0.0 for pid in pids}


# ------------------------------------------------------------------ load generators

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def run_wrk(url: str, connections: int, duration: float) -> dict:
    threads = min(connections, 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
                          "-H", f"X-API-Key: {API_KEY}", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "requests": requests_done, "p50_ms": p50, "p99_ms": p99,
            "non_2xx": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(0) if errors else None}


def run_python(url: str, connections: int, duration: float) -> dict:
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    latencies: list[list[float]] = [[] for _ in range(connections)]
    non_2xx = [0] * connections
    stop_at = time.perf_counter() + duration

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            conn.request("GET", path, headers={"X-API-Key": API_KEY})
            response = conn.getresponse()
            response.read()
            latencies[i].append((time.perf_counter() - started) * 1000)
            if response.status >= 400:
                non_2xx[i] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    merged = sorted(x for per in latencies for x in per)
    quantiles = statistics.quantiles(merged, n=100)
    return {"rps": len(merged) / elapsed, "requests": len(merged), "p50_ms": quantiles[49], "p99_ms": quantiles[98],
            "non_2xx": sum(non_2xx), "socket_errors": None}


# ------------------------------------------------------------------ main

def time_statements(settings, dbname: str, statements: dict[str, str], repeat: int = 200) -> dict[str, dict]:
    """Milliseconds of each statement (common.percentiles), run interleaved on one connection after
    a warm-up (plans cached, rows in memory): as the client sees it (`client`: the result sent and
    decoded too) and as the server executes it (`server`: EXPLAIN ANALYZE's execution time, without
    per-node timing)."""
    samples: dict[str, list[float]] = {}
    with psycopg.connect(**settings.conninfo(dbname), autocommit=True) as conn:
        for _ in range(20):
            for sql_text in statements.values():
                conn.execute(sql_text).fetchall()
        for _ in range(repeat):
            for name, sql_text in statements.items():
                started = time.perf_counter()
                conn.execute(sql_text).fetchall()
                samples.setdefault(f"{name}_client", []).append((time.perf_counter() - started) * 1000)
                (plan,) = conn.execute(common.q("explain_analyze_prefix") + sql_text).fetchone()
                samples.setdefault(f"{name}_server", []).append(plan[0]["Execution Time"])
    return {name: common.percentiles(v) for name, v in samples.items()}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run http", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per measurement (default 2)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds, median reported (default 5)")
    ap.add_argument("--positions", type=int, default=500)
    ap.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    ap.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    ap.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    common.add_json_option(ap, "http")
    return ap


def figures_of(results: list[dict]) -> list[dict]:
    """Per connection count and endpoint: requests/s beside SELECT 1's, and server CPU per request
    beside SELECT 1's (lower is better), with the latency percentiles."""
    out = []
    refs = {r["connections"]: r for r in results if r["endpoint"] == ENDPOINTS[0][0]}
    for r in results:
        c, ref = r["connections"], refs[r["connections"]]
        key = re.sub(r"[^a-z0-9]+", "_", r["endpoint"].lower().replace("/api/v1", "")).strip("_")
        is_ref = r["endpoint"] == ENDPOINTS[0][0]
        conns = f"{c} connection{'s' if c > 1 else ''}"
        ref_label = f"SELECT 1 behind the same key check, no rate limit, {conns}"
        out.append(figure(f"c{c}_{key}_rps", f"{r['endpoint']}, {conns}", r["rps"], "requests/s",
                          p50_ms=r["p50_ms"], p99_ms=r["p99_ms"],
                          reference=None if is_ref else reference(ref_label, ref["rps"], "requests/s")))
        out.append(figure(f"c{c}_{key}_cpu", f"{r['endpoint']}, {conns}: server CPU", r["cpu_ms_per_request"],
                          "ms/request",
                          reference=None if is_ref else reference(ref_label, ref["cpu_ms_per_request"], "ms/request")))
    return out


def render_figures(render: dict, positions: int) -> list[dict]:
    """The list's rendering in SQL beside reading the same rows without rendering them: the
    server's execution time, and the time a client waits (plus sending ~0.8 kB a position)."""
    rows = f"the same {positions} rows read unrendered (SELECT *)"
    return [figure("list_render_ms", f"SQL rendering the list of {positions} positions (pm.list_positions_text): "
                   "server execution time, median", render["render_server"]["p50"], "ms",
                   p99_ms=render["render_server"]["p99"],
                   reference=reference(f"{rows}, server execution time", render["rows_server"]["p50"], "ms")),
            figure("list_render_client_ms", "the same as a client on the same machine waits for it, median",
                   render["render_client"]["p50"], "ms", p99_ms=render["render_client"]["p99"],
                   reference=reference(f"{rows}, as the client waits for them", render["rows_client"]["p50"], "ms"))]


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    run = run_wrk if client == "wrk" else run_python

    settings = load()
    dbname = f"pm_bench_http_{os.getpid()}"
    print(f"preparing {dbname}: {args.positions} open positions ...", flush=True)
    prepare_database(settings, dbname, args.positions)
    render = time_statements(settings, dbname, {"render": common.q("list_render"), "rows": common.q("list_rows")})
    print(f"  SQL rendering the list of {args.positions}: {render['render_server']['p50']:.2f} ms median in the "
          f"server, {render['render_client']['p50']:.2f} ms at the client (the rows unrendered: "
          f"{render['rows_server']['p50']:.2f} / {render['rows_client']['p50']:.2f} ms)", flush=True)
    results = []
    server = None
    admin = psycopg.connect(**settings.conninfo("postgres"), autocommit=True)
    try:
        server, url = start_server(settings, dbname, args.workers, args.threads, common.OUT)
        for connections in (1, 8):
            asset = f"BENCH{min(42, args.positions - 1):04d}USDT"
            for _, path in ENDPOINTS:
                run(url + path.format(asset=asset), connections, 1.0)  # warm up: pools filled, statements prepared
            # Rounds interleave the endpoints, and the median round is reported: on a shared
            # machine, load from elsewhere then hits every endpoint alike.
            rounds: dict[str, list[dict]] = {label: [] for label, _ in ENDPOINTS}
            for _ in range(args.rounds):
                for label, path in ENDPOINTS:
                    before = cpu_seconds(server_pids(server.pid, admin, dbname))
                    measured = run(url + path.format(asset=asset), connections, args.duration)
                    after = cpu_seconds(server_pids(server.pid, admin, dbname))
                    used = sum(after[pid] - before.get(pid, 0.0) for pid in after)
                    measured["cpu_ms_per_request"] = used * 1000 / max(measured["requests"], 1)
                    rounds[label].append(measured)
            reference_rounds = rounds[ENDPOINTS[0][0]]
            for label, _ in ENDPOINTS:
                ordered = sorted(rounds[label], key=lambda r: r["rps"])
                row = dict(ordered[len(ordered) // 2])
                # the share of the reference, per round (same moment, same outside load), median
                shares = sorted(r["rps"] / ref["rps"] * 100 for r, ref in zip(rounds[label], reference_rounds))
                cpu = statistics.median(r["cpu_ms_per_request"] for r in rounds[label])
                row.update(endpoint=label, connections=connections, cpu_ms_per_request=cpu,
                           rps_rounds=[round(r["rps"]) for r in rounds[label]],
                           share_rounds=[round(x) for x in shares], share=statistics.median(shares),
                           non_2xx=sum(r["non_2xx"] for r in rounds[label]))
                results.append(row)
                print(f"  c={connections} {label:28s} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
                      f"p99 {row['p99_ms']:6.2f} ms  cpu {cpu:5.2f} ms/req  share of SELECT 1 {row['share_rounds']}  "
                      f"non-2xx {row['non_2xx']}", flush=True)
    finally:
        if server is not None:
            server.stop(timeout=15)
        admin.close()
        common.drop_database(settings, dbname)

    failed = [r for r in results if r["non_2xx"]]
    path = common.write_result("http", command=common.explicit_command("http", ap, args), path=args.json,
                               params=vars(args) | {"client": client}, passed=not failed,
                               figures=figures_of(results) + render_figures(render, args.positions),
                               detail={"results": results, "render": render})
    print(f"(written to {path})")
    if failed:
        print(f"\nERROR: non-2xx responses in {[(r['endpoint'], r['connections']) for r in failed]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
