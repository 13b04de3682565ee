#!/usr/bin/env python3
"""Scaling out on one machine: the effect of a second consumer process and of a second API process.

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

    bench/run scaleout                        # about 2 minutes
    bench/run scaleout --fills 5000 --seconds 10

The reference of each two-process figure is the one-process figure of the same run. Writes
bench/results/scaleout.json (--json FILE elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from app.api.keys import new_key  # noqa: E402
from app import db as appdb  # noqa: E402
from app import settings as settings_mod  # noqa: E402
from bench import common  # noqa: E402
from bench.common import figure, percentiles, q, reference  # noqa: E402

ASSETS = [f"X{i:03d}USDT" for i in range(100)]
API_KEY = new_key()   # the API refuses short or placeholder keys


def env_for(settings, prefix: str, **extra: str) -> dict[str, str]:
    return common.service_env(settings, clean=True, **common.queue_names(prefix), POSITION_MANAGER_LOG_LEVEL="WARNING",
                              POSITION_MANAGER_API_KEY=API_KEY, POSITION_MANAGER_RATE_LIMIT_ENABLED="false", **extra)


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

    connection = common.mq_connect(settings, "scaleout-bench")
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    channel.confirm_delivery()
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    for body in bodies:
        channel.basic_publish("", queue, body, props)
    connection.close()


def consumer_run(base, processes: int, bodies: list[bytes], tag: str) -> tuple[float, list]:
    settings = common.fresh_database(base, f"pm_bench_scaleout_{os.getpid()}_{tag}")
    env = env_for(settings, f"pmbench-scaleout-{os.getpid()}-{tag}")
    publish(settings, env["POSITION_MANAGER_ORDER_QUEUE"], bodies)
    services = []
    try:
        started = time.monotonic()
        for i in range(processes):
            services.append(common.start_consumers(env, common.OUT / "scaleout", "order", name=f"order-{tag}-{i}"))
        with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
            deadline = started + 600
            done = dead = 0
            while time.monotonic() < deadline:
                done = conn.execute(q("ledger_trades")).fetchone()[0]
                dead = conn.execute(q("dead_letter_count")).fetchone()[0]
                if done + dead >= len(bodies):
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            final = conn.execute(q("one_way_positions")).fetchall()
        if done < len(bodies):
            print(f"   warning: only {done} of {len(bodies)} applied ({dead} dead letters)")
        return elapsed, final
    finally:
        common.stop_all(services)
        common.delete_queues(settings, [v for k, v in env.items() if k.endswith("_QUEUE") and k.startswith("POSITION_MANAGER_")])
        common.drop_database(base, settings.postgres_db)


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
    settings = common.fresh_database(base, f"pm_bench_scaleout_{os.getpid()}_api")
    env = env_for(settings, f"pmbench-scaleout-{os.getpid()}-api", POSITION_MANAGER_API_WORKERS=workers,
                  POSITION_MANAGER_API_THREADS="4")
    with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
        with conn.pipeline():
            for body in fills(len(ASSETS) * 3, seed=9):
                conn.execute(appdb.q("apply_order_event"), {"event": body.decode()})
        conn.execute(appdb.q("job_set_prices"), {"prices": json.dumps({a: "150" for a in ASSETS}),
                                                 "trace": "bench", "actor": "bench"})
    results = {}
    services = []
    try:
        for i in range(2):
            service, url = common.start_api(env, common.OUT / "scaleout", name=f"api-{i}")
            services.append(service)
            ports = [int(s.argv[-1].rsplit(":", 1)[1]) for s in services]
            results["one" if i == 0 else "two"] = load(ports, clients, seconds)
    finally:
        common.stop_all(services)
        common.drop_database(base, settings.postgres_db)
    return results


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run scaleout", description=__doc__.split("\n\n")[0])
    ap.add_argument("--fills", type=int, default=20000, help="order events for the consumer runs (default 20000)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (default 16)")
    ap.add_argument("--seconds", type=float, default=20, help="seconds of HTTP load per run (default 20)")
    ap.add_argument("--workers", default="2", help="gunicorn workers per API process (default 2)")
    common.add_json_option(ap, "scaleout")
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    base = settings_mod.load()
    figures, detail = [], {}
    print(f"machine: {os.cpu_count()} CPU(s)")
    bodies = fills(args.fills)
    print(f"consumers: {args.fills} fills pre-loaded on a fresh order queue, bin/consume order")
    one, final_one = consumer_run(base, 1, bodies, "c1")
    print(f"   1 process : {one:.1f} s, {args.fills / one:.0f} fills/s")
    two, final_two = consumer_run(base, 2, bodies, "c2")
    identical = final_one == final_two and len(final_one) > 0
    print(f"   2 processes: {two:.1f} s, {args.fills / two:.0f} fills/s  (x{one / two:.2f})")
    print(f"   final positions identical: {identical}")
    one_ref = reference("the same, one process", args.fills / one, "fills/s")
    figures += [figure("consumers_1", f"bin/consume order, one process, {args.fills:,} fills pre-loaded",
                       args.fills / one, "fills/s"),
                figure("consumers_2", "the same, two processes on the same queue", args.fills / two, "fills/s",
                       reference=one_ref)]
    print(f"API: {args.clients} keep-alive clients for {args.seconds:g} s each, 70% GET /positions/{{asset}}, "
          f"30% GET /portfolio/exposure; {args.workers} gunicorn workers per process")
    results = api_runs(base, args.clients, args.seconds, args.workers)
    errors = 0
    for key, label in (("one", "bin/serve, one process"), ("two", "bin/serve, two processes (two ports)")):
        rate, lat, err = results[key]
        errors += err
        p = percentiles(lat)
        detail[f"api_{key}"] = {"rps": rate, "errors": err, "latency_s": p}
        print(f"   {label}: {rate:.0f} req/s (x{rate / results['one'][0]:.2f}), p50 {p['p50'] * 1000:.1f} ms, "
              f"p99 {p['p99'] * 1000:.1f} ms, {err} errors")
        figures.append(figure(f"api_{key}", f"{label}, {args.clients} clients, read path", rate, "requests/s",
                              p50_ms=p["p50"] * 1000, p99_ms=p["p99"] * 1000,
                              reference=None if key == "one" else reference("the same, one process",
                                                                            results["one"][0], "requests/s")))
    detail["final_positions_identical"] = identical
    path = common.write_result("scaleout", command=common.explicit_command("scaleout", ap, args), path=args.json,
                               params=vars(args), passed=identical and errors == 0, figures=figures, detail=detail)
    print(f"(written to {path})")
    return 0 if identical and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
