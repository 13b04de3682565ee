#!/usr/bin/env python3
"""Benchmark of the features beyond the contract: trade statistics, history, as-of, the live stream.

A. SQL at scale, on a fresh database: H closed holdings spread over A assets (loaded through
   pm.apply_order_event in one statement), then the median time of pm.trade_statistics_json()
   (GET /api/v1/portfolio/summary), of a history page at offset 0 and deep in the trail, and of an
   as-of reconstruction.
B. The live stream over a real gunicorn (bin/serve, 1 gthread worker x 4 threads, so 3 streams):
   3 SSE clients open, W writer threads committing fills concurrently (so outbox ids commit out of
   order), N fills in all. Reports commit -> event latency (p50/p95/p99 over every stream), checks
   that every stream received every event exactly once in increasing id order, and the latency of
   ordinary GETs answered meanwhile by the worker's free thread.

    bench/run extras                       # about a minute
    bench/run extras --holdings 20000 --fills 1000

Writes bench/results/extras.json (--json FILE elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
import requests  # noqa: E402

from app.api.keys import new_key  # noqa: E402
from app.db import q  # noqa: E402
from app.settings import load  # noqa: E402
from bench import common  # noqa: E402
from bench.common import figure  # noqa: E402

API_KEY = new_key()   # the API refuses short or placeholder keys


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def timed(conn, query: str, args: dict, repeat: int = 5) -> float:
    """Median milliseconds of one named query."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        conn.execute(q(query), args).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_sql(conn, holdings: int, assets: int) -> dict:
    started = time.perf_counter()
    conn.execute(common.q("extras_load_holdings"), {"holdings": holdings, "assets": assets})
    load_s = time.perf_counter() - started
    rows = conn.execute(common.q("ledger_rows")).fetchone()[0]
    (stats,) = conn.execute(q("extras_trade_statistics")).fetchone()
    assert json.loads(stats)["closed_holdings"] == holdings, stats
    deep = holdings // assets  # the audit rows of one asset: two per holding
    return {
        "holdings": holdings, "ledger_rows": rows, "load_seconds": round(load_s, 1),
        "summary_ms": round(timed(conn, "extras_trade_statistics", {}), 1),
        "history_first_page_ms": round(timed(conn, "extras_position_history",
                                             {"asset": "BENCH1USDT", "mode": "one-way", "limit": 100, "offset": 0}), 2),
        "history_deep_page_ms": round(timed(conn, "extras_position_history",
                                            {"asset": "BENCH1USDT", "mode": "one-way", "limit": 100, "offset": deep}), 2),
        "history_deep_offset": deep,
        "as_of_ms": round(timed(conn, "extras_position_as_of",
                                {"asset": "BENCH1USDT", "mode": "one-way", "as_of": "2025-01-05T00:00:00Z"}), 2),
    }


class Stream:
    """One SSE client; records (arrival time, id, asset, version) of every event."""

    def __init__(self, url: str):
        self.response = requests.get(url, headers={"X-API-Key": API_KEY}, stream=True, timeout=(5, 60))
        assert self.response.status_code == 200, self.response.text
        self.events: list[tuple[float, int, str, int]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        current: dict = {}
        try:
            for line in self.response.iter_lines(chunk_size=1, decode_unicode=True):
                if line.startswith(":"):
                    self.ready.set()
                elif line == "":
                    if current.get("event") == "initial_data":     # the stream is listening
                        self.ready.set()
                    elif "data" in current:
                        data = json.loads(current["data"])
                        self.events.append((time.perf_counter(), int(current["id"]), data["asset"], data["version"]))
                    current = {}
                else:
                    key, _, value = line.partition(": ")
                    current[key] = value
        except (requests.RequestException, AttributeError, ValueError):
            pass


def bench_stream(settings, fills: int, writers: int) -> dict:
    env = common.service_env(settings, POSITION_MANAGER_API_KEY=API_KEY, POSITION_MANAGER_API_WORKERS="1",
                             POSITION_MANAGER_API_THREADS="4", POSITION_MANAGER_RATE_LIMIT_DEFAULT="1000000",
                             POSITION_MANAGER_LOG_LEVEL="WARNING")
    server, base = common.start_api(env, common.OUT, name="extras_bench_gunicorn")
    try:
        streams = [Stream(base + "/api/v1/stream") for _ in range(3)]
        for stream in streams:
            assert stream.ready.wait(10)

        committed: dict[tuple[str, int], float] = {}
        lock = threading.Lock()
        work: queue.Queue = queue.Queue()
        for i in range(fills):
            work.put(i)

        def writer(n: int) -> None:
            with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
                while True:
                    try:
                        i = work.get_nowait()
                    except queue.Empty:
                        return
                    asset = f"LIVE{i % (writers * 4)}USDT"
                    event = {"event_type": "order_executed", "execution_id": f"live-{i}", "order_id": f"live-{i}",
                             "asset": asset, "side": "Buy", "execution_quantity": "1", "execution_price": "100",
                             "execution_fees": "0", "executed_at": "2025-06-01T00:00:00Z"}
                    (result,) = conn.execute(q("apply_order_event"), {"event": json.dumps(event)}).fetchone()
                    with lock:
                        committed[(asset, result["position"]["version"])] = time.perf_counter()

        get_latencies: list[float] = []
        stop = threading.Event()

        def reader() -> None:
            session = requests.Session()
            while not stop.is_set():
                started = time.perf_counter()
                response = session.get(base + "/api/v1/portfolio/exposure", headers={"X-API-Key": API_KEY}, timeout=10)
                assert response.status_code == 200
                get_latencies.append((time.perf_counter() - started) * 1000)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
        polling = threading.Thread(target=reader)
        started = time.perf_counter()
        polling.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        write_seconds = time.perf_counter() - started
        deadline = time.monotonic() + 30
        while any(len(s.events) < fills for s in streams) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        polling.join()

        latencies = []
        for s in streams:
            ids = [e[1] for e in s.events]
            assert len(s.events) == fills, f"a stream got {len(s.events)} of {fills} events"
            assert ids == sorted(set(ids)), "events out of order or duplicated"
            latencies += [(arrival - committed[(asset, version)]) * 1000 for arrival, _, asset, version in s.events]
        for s in streams:
            s.response.close()
        return {
            "fills": fills, "writers": writers, "streams": len(streams), "write_seconds": round(write_seconds, 2),
            "fills_per_second": round(fills / write_seconds),
            "latency_ms_p50": round(percentile(latencies, 50), 1), "latency_ms_p95": round(percentile(latencies, 95), 1),
            "latency_ms_p99": round(percentile(latencies, 99), 1), "latency_ms_max": round(max(latencies), 1),
            "get_requests_meanwhile": len(get_latencies),
            "get_ms_p50": round(percentile(get_latencies, 50), 1), "get_ms_p99": round(percentile(get_latencies, 99), 1),
        }
    finally:
        server.stop(timeout=15)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run extras", description=__doc__.splitlines()[0])
    ap.add_argument("--holdings", type=int, default=10000)
    ap.add_argument("--assets", type=int, default=50)
    ap.add_argument("--fills", type=int, default=400)
    ap.add_argument("--writers", type=int, default=4)
    common.add_json_option(ap, "extras")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    name = f"pm_bench_extras_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    base = load()
    try:
        settings = common.fresh_database(base, name)
        with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
            s = bench_sql(conn, args.holdings, args.assets)
        t = bench_stream(settings, args.fills, args.writers)
    finally:
        common.drop_database(base, name)
    scale = f"{s['holdings']:,} closed holdings, {s['ledger_rows']:,} ledger rows"
    figures = [
        figure("summary", f"pm.trade_statistics_json() (GET /portfolio/summary), {scale}, median", s["summary_ms"], "ms"),
        figure("history_first_page", "history of one position, first page of 100, median", s["history_first_page_ms"], "ms"),
        figure("history_deep_page", f"history, page of 100 at offset {s['history_deep_offset']}, median",
               s["history_deep_page_ms"], "ms"),
        figure("as_of", "as-of reconstruction of one position, median", s["as_of_ms"], "ms"),
        figure("stream_latency_p50", f"live stream, commit -> event p50 ({t['streams']} streams, {t['fills']} fills "
                                     f"by {t['writers']} concurrent writers)", t["latency_ms_p50"], "ms",
               p99_ms=t["latency_ms_p99"], max_ms=t["latency_ms_max"]),
        figure("get_meanwhile_p50", "GET /portfolio/exposure on the worker's free thread meanwhile, p50",
               t["get_ms_p50"], "ms", p99_ms=t["get_ms_p99"], n=t["get_requests_meanwhile"]),
    ]
    path = common.write_result("extras", command=common.explicit_command("extras", ap, args), path=args.json,
                               params=vars(args), passed=True, figures=figures, detail={"sql": s, "stream": t})
    for f in figures:
        print(f"  {f['label']}: {f['value']} {f['unit']}")
    print(f"(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
