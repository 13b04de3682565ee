"""HTTP benchmark of the REST API under gunicorn (issue: REST API).

A fresh database with N open positions (default 500, loaded through pm.apply_order_event and
priced through pm.set_prices), bin/serve with auth and the shared rate limit ON (limits set out of
reach), and for each endpoint requests/s and p50/p99 latency at 1 and 8 persistent connections,
beside GET /bench/select1: the reference, one `SELECT 1` through the same middleware (auth, rate
limit) and pool, enabled by POSITION_MANAGER_BENCH_REFERENCE=1.

    .venv/bin/python bench/http_bench.py                 # ~2 minutes
    .venv/bin/python bench/http_bench.py --rounds 5 --duration 5 --workers 4 --threads 4

Load generator: wrk (apt-get install wrk) when installed, else a Python client (http.client,
one keep-alive connection per thread; slower, so figures are lower and noisier). The endpoints
are measured in interleaved rounds and medians reported. Besides requests/s (at the mercy of
whatever else runs on the machine), each cell reports the server CPU per request: user+system
time of the gunicorn processes and of their PostgreSQL backends, divided by the requests served;
on a CPU-bound box, throughput is inversely proportional to it, and it hardly moves with outside
load. Results are printed as a Markdown table and written to bench/out/http_bench.json.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from app.db import q  # noqa: E402
from app.settings import load  # noqa: E402
from jobs import migrate  # noqa: E402

API_KEY = "bench-key"
ENDPOINTS = [
    ("SELECT 1 (reference)", "/bench/select1"),
    ("/api/v1/positions/{asset}", "/api/v1/positions/BENCH0042USDT"),
    ("/api/v1/portfolio", "/api/v1/portfolio"),
    ("/api/v1/positions", "/api/v1/positions"),
    ("/health", "/health"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_database(settings, dbname: str, positions: int) -> None:
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    migrate.ensure_database(settings, dbname)
    migrate.apply(settings, dbname)
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
        conn.execute("ANALYZE")


def start_server(settings, dbname: str, workers: int, threads: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ)
    env.update({
        "POSTGRES_HOST": settings.postgres_host, "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_USER": settings.postgres_user, "POSTGRES_PASSWORD": settings.postgres_password,
        "POSTGRES_DB": dbname, "POSITION_MANAGER_API_KEY": API_KEY,
        "POSITION_MANAGER_RATE_LIMIT_ENABLED": "true", "POSITION_MANAGER_RATE_LIMIT_DEFAULT": "1000000000",
        "POSITION_MANAGER_API_WORKERS": str(workers), "POSITION_MANAGER_API_THREADS": str(threads),
        "POSITION_MANAGER_BENCH_REFERENCE": "1", "POSITION_MANAGER_LOG_LEVEL": "INFO",
    })
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(ROOT / "bin" / "serve"), "--bind", f"127.0.0.1:{port}"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"bin/serve exited with {proc.returncode}; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bin/serve did not answer; see {log_path}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------ server CPU per request

_TICK = os.sysconf("SC_CLK_TCK")


def server_pids(master_pid: int, admin: psycopg.Connection, dbname: str) -> list[int]:
    """The gunicorn master and workers, and the PostgreSQL backends connected to the bench database."""
    pids = [master_pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master_pid:
                pids.append(int(entry.name))
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                         (dbname,)).fetchall()
    return pids + [pid for (pid,) in rows]


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """user + system CPU of each process (a process that is gone counts as 0)."""
    result = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            result[pid] = (int(fields[11]) + int(fields[12])) / _TICK
        except OSError:
            result[pid] = 0.0
    return result


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

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, median reported (default 5)")
    parser.add_argument("--positions", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--db", default="pm_http_bench", help="database to (re)create (default pm_http_bench)")
    args = parser.parse_args(argv)

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    run = run_wrk if client == "wrk" else run_python

    settings = load()
    print(f"preparing {args.db}: {args.positions} open positions ...", flush=True)
    prepare_database(settings, args.db, args.positions)
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(settings, args.db, args.workers, args.threads, out_dir / "http_bench_gunicorn.log")
    results = []
    admin = psycopg.connect(**settings.conninfo("postgres"), autocommit=True)
    try:
        for connections in (1, 8):
            for _, path in ENDPOINTS:
                run(url + path, connections, 1.0)  # warm up: pools filled, statements prepared
            # Rounds interleave the endpoints, and the median round is reported: on a shared
            # machine, load from elsewhere then hits every endpoint alike.
            rounds: dict[str, list[dict]] = {label: [] for label, _ in ENDPOINTS}
            for round_no in range(args.rounds):
                for label, path in ENDPOINTS:
                    pids = server_pids(proc.pid, admin, args.db)
                    before = cpu_seconds(pids)
                    figures = run(url + path, connections, args.duration)
                    after = cpu_seconds(server_pids(proc.pid, admin, args.db))
                    used = sum(after[pid] - before.get(pid, 0.0) for pid in after)
                    figures["cpu_ms_per_request"] = used * 1000 / max(figures["requests"], 1)
                    rounds[label].append(figures)
            reference_rounds = rounds[ENDPOINTS[0][0]]
            for label, _ in ENDPOINTS:
                ordered = sorted(rounds[label], key=lambda r: r["rps"])
                figures = dict(ordered[len(ordered) // 2])
                # the share of the reference, per round (same moment, same outside load), median
                shares = sorted(r["rps"] / ref["rps"] * 100 for r, ref in zip(rounds[label], reference_rounds))
                cpu = statistics.median(r["cpu_ms_per_request"] for r in rounds[label])
                figures.update(endpoint=label, connections=connections, cpu_ms_per_request=cpu,
                               rps_rounds=[round(r["rps"]) for r in rounds[label]],
                               share_rounds=[round(x) for x in shares], share=statistics.median(shares),
                               non_2xx=sum(r["non_2xx"] for r in rounds[label]))
                results.append(figures)
                print(f"  c={connections} {label:28s} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:6.2f} ms  "
                      f"p99 {figures['p99_ms']:6.2f} ms  cpu {cpu:5.2f} ms/req  rounds {figures['rps_rounds']}  share {figures['share_rounds']}  "
                      f"non-2xx {figures['non_2xx']}",
                      flush=True)
    finally:
        stop_server(proc)
        admin.close()

    print(f"\n{args.positions} open positions, gunicorn {args.workers} workers x {args.threads} threads, "
          f"client {client}, median of {args.rounds} interleaved rounds of {args.duration:g} s, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    cpu_reference = {r["connections"]: r["cpu_ms_per_request"] for r in results
                     if r["endpoint"] == ENDPOINTS[0][0]}
    print("| endpoint | conns | req/s | p50 ms | p99 ms | req/s vs SELECT 1 | server CPU ms/req | CPU-bound share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        r["cpu_share"] = cpu_reference[r["connections"]] / r["cpu_ms_per_request"] * 100
        print(f"| {r['endpoint']} | {r['connections']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['share']:.0f}% | {r['cpu_ms_per_request']:.2f} | {r['cpu_share']:.0f}% |")
    (out_dir / "http_bench.json").write_text(json.dumps(
        {"positions": args.positions, "workers": args.workers, "threads": args.threads, "client": client,
         "duration": args.duration, "rounds": args.rounds, "results": results}, indent=2))
    failed = [r for r in results if r["non_2xx"]]
    if failed:
        print(f"\nERROR: non-2xx responses in {[(r['endpoint'], r['connections']) for r in failed]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
