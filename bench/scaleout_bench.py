#!/usr/bin/env python3
"""Scaling out on one machine (issue 5, "Scaling out"): the effect of a second consumer process and
of a second API process.

Consumers: --fills order events (shape A, 100 assets) are published to a fresh order queue
(unique name on the RabbitMQ of the settings), then `bin/consume order` is started once with one
process and once with two processes on the same queue (each on a fresh database); the figure is
fills applied per second from start to the last commit, and the final positions must be identical
(fills are idempotent and order-independent, so two competing consumers give the same result).

API: `bin/serve` (POSITION_MANAGER_API_WORKERS workers each) is loaded by --clients keep-alive
HTTP clients for --seconds seconds with the order-manager's read path (GET /positions/{asset},
GET /portfolio/exposure), first against one gunicorn process, then spread over two gunicorn
processes on two ports (as two hosts behind a load balancer would be). Figures: requests/s and
latency percentiles. The load generator runs on the same machine and takes CPU from the servers:
on a small machine this shows that a second process works (shared rate limit and cache
invalidation live in PostgreSQL) more than how much it adds.

    bench/scaleout_bench.py                        # about 2 minutes
    bench/scaleout_bench.py --fills 5000 --seconds 10
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_mod  # noqa: E402
from jobs import migrate  # noqa: E402

ASSETS = [f"X{i:03d}USDT" for i in range(100)]
API_KEY = "scaleout-bench-key"


def stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process, then wait up to 30 s each; kill what does not stop."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000  # noqa: E731
    return f"p50 {pick(0.5):.1f} ms, p95 {pick(0.95):.1f} ms, p99 {pick(0.99):.1f} ms"


def fresh_database(base, name: str):
    with psycopg.connect(**base.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    settings = base.with_overrides(postgres_db=name)
    migrate.ensure_database(settings)
    migrate.apply(settings)
    return settings


def drop_database(base, name: str) -> None:
    with psycopg.connect(**base.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def env_for(settings, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "POSITION_MANAGER_"))}
    env.update(POSTGRES_HOST=settings.postgres_host, POSTGRES_PORT=str(settings.postgres_port),
               POSTGRES_USER=settings.postgres_user, POSTGRES_DB=settings.postgres_db,
               POSITION_MANAGER_LOG_LEVEL="WARNING", POSITION_MANAGER_API_KEY=API_KEY,
               POSITION_MANAGER_RATE_LIMIT_ENABLED="false")
    if settings.postgres_password:
        env["POSTGRES_PASSWORD"] = settings.postgres_password
    for name in ("ORDER_QUEUE", "POSITION_QUEUE", "DEAD_LETTER_QUEUE", "POSITION_UPDATED_QUEUE",
                 "PORTFOLIO_UPDATED_QUEUE", "SNAPSHOT_CREATED_QUEUE"):
        env[f"POSITION_MANAGER_{name}"] = f"{prefix}.{name.lower()}"
    env.update(extra)
    return env


def fills(n: int, seed: int = 3) -> list[bytes]:
    rnd = random.Random(seed)
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    events = []
    for i in range(n):
        key = f"scaleout-{seed}-{i}"
        events.append(json.dumps({
            "event_id": key, "event_type": "order_executed", "execution_id": key, "order_id": f"o-{key}",
            "asset": ASSETS[i % len(ASSETS)], "side": rnd.choice(("Buy", "Sell")),
            "execution_quantity": str(rnd.randint(1, 100)), "execution_price": str(rnd.randint(100, 200)),
            "execution_fees": "0.01", "executed_at": (start + timedelta(milliseconds=i)).isoformat()}).encode())
    return events


def publish(settings, queue: str, bodies: list[bytes]) -> None:
    import pika

    from app.broker import connect
    connection = connect(settings, "scaleout-bench")
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    channel.confirm_delivery()
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    for body in bodies:
        channel.basic_publish("", queue, body, props)
    connection.close()


def delete_queues(settings, env: dict[str, str]) -> None:
    from app.broker import connect
    connection = connect(settings, "scaleout-bench")
    for key, queue in env.items():
        if key.endswith("_QUEUE") and key.startswith("POSITION_MANAGER_"):
            connection.channel().queue_delete(queue)
    connection.close()


def consumer_run(base, processes: int, bodies: list[bytes], tag: str) -> tuple[float, list]:
    settings = fresh_database(base, f"pm_bench_scaleout_{tag}")
    prefix = f"pmbench-scaleout-{os.getpid()}-{tag}"
    env = env_for(settings, prefix)
    publish(settings, env["POSITION_MANAGER_ORDER_QUEUE"], bodies)
    procs = []
    try:
        started = time.monotonic()
        for _ in range(processes):
            procs.append(subprocess.Popen([str(ROOT / "bin/consume"), "order"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
            deadline = started + 600
            done = 0
            while time.monotonic() < deadline:
                done = conn.execute("SELECT count(*) FROM pm.executions WHERE kind = 'trade'").fetchone()[0]
                dead = conn.execute("SELECT count(*) FROM pm.dead_letters").fetchone()[0]
                if done + dead >= len(bodies):
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            final = conn.execute("SELECT asset, size, average_entry_price, realized_pnl FROM public.positions "
                                 "ORDER BY asset").fetchall()
        if done < len(bodies):
            print(f"   warning: only {done} of {len(bodies)} applied ({dead} dead letters)")
        return elapsed, final
    finally:
        stop_all(procs)
        delete_queues(settings, env)
        drop_database(base, settings.postgres_db)


class Client(threading.Thread):
    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, stop
        self.latencies: list[float] = []
        self.errors = 0

    def run(self) -> None:
        import http.client
        rnd = random.Random(self.port ^ id(self))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            path = (f"/api/v1/positions/{rnd.choice(ASSETS)}" if rnd.random() < 0.7
                    else "/api/v1/portfolio/exposure")
            started = time.monotonic()
            try:
                conn.request("GET", path, headers={"X-API-Key": API_KEY})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.errors += 1
                self.latencies.append(time.monotonic() - started)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def start_api(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(ROOT / "bin/serve"), "--bind", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"bin/serve did not answer on port {port}")


def load(ports: list[int], clients: int, seconds: float) -> tuple[float, list[float], int]:
    stop = threading.Event()
    threads = [Client(ports[i % len(ports)], stop) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    latencies = [lat for t in threads for lat in t.latencies]
    return len(latencies) / seconds, latencies, sum(t.errors for t in threads)


def api_runs(base, clients: int, seconds: float, workers: str) -> dict:
    settings = fresh_database(base, "pm_bench_scaleout_api")
    env = env_for(settings, f"pmbench-scaleout-{os.getpid()}-api", POSITION_MANAGER_API_WORKERS=workers,
                  POSITION_MANAGER_API_THREADS="4")
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        with conn.pipeline():
            for body in fills(len(ASSETS) * 3, seed=9):
                conn.execute("SELECT pm.apply_order_event(%s::jsonb)", (body.decode(),))
        conn.execute("SELECT pm.set_prices(%s::jsonb, 'exchange')", (json.dumps({a: "150" for a in ASSETS}),))
    results = {}
    procs = []
    try:
        ports = [free_port(), free_port()]
        procs.append(start_api(env, ports[0]))
        rate, lat, errors = load(ports[:1], clients, seconds)
        results["one"] = (rate, lat, errors)
        procs.append(start_api(env, ports[1]))
        rate, lat, errors = load(ports, clients, seconds)
        results["two"] = (rate, lat, errors)
    finally:
        stop_all(procs)
        drop_database(base, settings.postgres_db)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fills", type=int, default=20000, help="order events for the consumer runs (default 20000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (default 16)")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of HTTP load per run (default 20)")
    parser.add_argument("--workers", default="2", help="gunicorn workers per API process (default 2)")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-consumers", action="store_true")
    args = parser.parse_args()
    base = settings_mod.load()
    print(f"machine: {os.cpu_count()} CPU(s)")
    if not args.skip_consumers:
        bodies = fills(args.fills)
        print(f"consumers: {args.fills} fills pre-loaded on a fresh order queue, bin/consume order")
        one, final_one = consumer_run(base, 1, bodies, "c1")
        print(f"   1 process : {one:.1f} s, {args.fills / one:.0f} fills/s")
        two, final_two = consumer_run(base, 2, bodies, "c2")
        print(f"   2 processes: {two:.1f} s, {args.fills / two:.0f} fills/s  (x{one / two:.2f})")
        print(f"   final positions identical: {final_one == final_two}")
    if not args.skip_api:
        print(f"API: {args.clients} keep-alive clients for {args.seconds:g} s each, 70% GET /positions/{{asset}}, "
              f"30% GET /portfolio/exposure; {args.workers} gunicorn workers per process")
        results = api_runs(base, args.clients, args.seconds, args.workers)
        base_rate = results["one"][0]
        for label, key in (("1 process ", "one"), ("2 processes", "two")):
            rate, lat, errors = results[key]
            print(f"   {label}: {rate:.0f} req/s (x{rate / base_rate:.2f}), {percentiles(lat)}, {errors} errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
