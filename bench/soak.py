#!/usr/bin/env python3
"""Soak under injected faults: the real processes against private servers, faults on a schedule, checks.

The real API, consumers and relay against a private PostgreSQL and a private RabbitMQ node, mixed
traffic for --duration seconds, faults on a schedule, then checks.

    bench/soak                    # 5 minutes (300 s), every fault at least once
    bench/soak --duration 30      # the CI version (tests/soak/test_soak.py)

Traffic (bench/soak_traffic.py): executions in the three order shapes over 50 assets, 10% of them
published again later (duplicates) and 10% held back and published after newer ones (reordered);
exchange position events (the three position shapes); 1% poison messages (every kind of bad input);
API reads (portfolio, positions, one position, exposure) from several client threads.

Faults (each at least once, spread over the run; times recorded): SIGKILL of the order consumer,
SIGKILL of the relay (bin/consume's supervisor restarts both), a gunicorn worker SIGKILLed (the
master respawns it), the RabbitMQ node stopped and started, PostgreSQL stopped (-m immediate, then
-m fast on the next round) and started.

Checks at the end (after draining, with a deadline): every position equals the reference fold
(bench/reference.py) of the executions published, and pm.fold_ledger of its ledger; the ledger holds exactly the published
execution keys (zero lost, zero doubled); every audited change (pm.outbox) reached the
position_updated queue; the dead-letter queue holds exactly the poison messages; the API answered
no 5xx but 503, and 503 only while PostgreSQL was down; the queues drained after every fault.
Exit status 0 only when every check passes. Writes the record (time series included) to
bench/results/soak.json (--json FILE elsewhere) for bench/report.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from statistics import quantiles

import pika
import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.api.keys import new_key  # noqa: E402
from app import broker  # noqa: E402
from app import db as appdb  # noqa: E402
from app import settings as settings_mod  # noqa: E402
from bench import common  # noqa: E402
from bench.common import ROOT, PrivatePostgres, PrivateRabbit, Service, figure, free_port, q, wait_http  # noqa: E402
from bench.soak_traffic import ORDER_QUEUE, POSITION_QUEUE, Message, Traffic, fold, fold_hedge  # noqa: E402
from jobs import migrate  # noqa: E402

API_KEY = new_key()   # the API refuses short or placeholder keys
# the RabbitMQ restart is the slowest (10-15 s on a busy machine): last, so the others stay on schedule
FAULT_KINDS = ("consumer_kill", "relay_kill", "api_worker_kill", "postgres_restart", "rabbitmq_restart")
PG_GRACE = 15.0        # seconds after PostgreSQL is back during which a 503 is still expected
WORKER_GRACE = 5.0     # seconds after a worker kill during which a dropped connection is expected


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# The record of what happened
# ------------------------------------------------------------------------------------------------

@dataclass
class Fault:
    kind: str
    at: float                  # scheduled, seconds since the traffic started
    t_start: float | None = None
    t_end: float | None = None
    ok: bool = False
    detail: str = ""
    recovered_after: float | None = None   # seconds from t_end until the queues and the outbox drained
    peak_backlog: int | None = None        # most ready messages + unrelayed outbox rows until then


@dataclass
class Record:
    t0: float = field(default_factory=time.monotonic)
    published: list[tuple[float, Message]] = field(default_factory=list)
    api: list[tuple[float, str, int, float]] = field(default_factory=list)   # t, endpoint, status (0 = no answer), s
    samples: list[dict] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    seen_events: set[str] = field(default_factory=set)
    seen_versions: set[tuple[str, str, int]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    api_scanned: int = 0          # the sampler's running count of API answers other than 200
    api_non_200: int = 0

    def now(self) -> float:
        return time.monotonic() - self.t0


# ------------------------------------------------------------------------------------------------
# Broker clients of the soak itself (publisher, event collector, depth sampler), all reconnecting
# ------------------------------------------------------------------------------------------------

class Broker:
    """One pika connection that reconnects on demand."""

    def __init__(self, settings: settings_mod.Settings, name: str) -> None:
        self.settings, self.name = settings, name
        self.conn: pika.BlockingConnection | None = None
        self.channel = None

    def ensure(self, confirm: bool = False):
        if self.conn is None or not self.conn.is_open or self.channel is None or not self.channel.is_open:
            self.close()
            self.conn = pika.BlockingConnection(broker.connection_parameters(self.settings, f"soak-{self.name}"))
            self.channel = self.conn.channel()
            for queue in (self.settings.order_queue, self.settings.position_queue, self.settings.dead_letter_queue,
                          self.settings.position_updated_queue):
                self.channel = broker.declare_queue(self.conn, self.channel, self.settings, queue)
            if confirm:
                self.channel.confirm_delivery()
        return self.channel

    def close(self) -> None:
        try:
            if self.conn is not None and self.conn.is_open:
                self.conn.close()
        except Exception:  # noqa: BLE001 - a dead connection cannot be closed cleanly
            pass
        self.conn, self.channel = None, None


class BrokerGone(RuntimeError):
    """The private broker did not come back: the run cannot go on."""


class Publisher:
    """Publishes as the producers do (default exchange, persistent, message_id) with publisher
    confirms; a message counts as published only once the broker confirmed it. While the broker
    is away it retries (a producer's buffer); a retried message may arrive twice, which is just
    another duplicate."""

    def __init__(self, settings: settings_mod.Settings, record: Record, stop: threading.Event) -> None:
        self.settings, self.record, self.stop = settings, record, stop
        self.broker = Broker(settings, "publisher")
        self.queues = {ORDER_QUEUE: settings.order_queue, POSITION_QUEUE: settings.position_queue}
        self.retries = 0
        self.patience = 180.0

    def publish(self, msg: Message) -> None:
        """Publish until confirmed; raises BrokerGone when the broker stays unreachable for
        --broker-patience seconds (a restart that never came back), or when the run is stopping."""
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", message_id=msg.message_id,
                                     headers={"trace_id": f"soak-{msg.message_id}"})
        failing_since = None
        while True:
            try:
                channel = self.broker.ensure(confirm=True)
                channel.basic_publish("", self.queues[msg.role], msg.body, props, mandatory=True)
                with self.record.lock:
                    self.record.published.append((self.record.now(), msg))
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.broker.close()
                self.retries += 1
                failing_since = failing_since or time.monotonic()
                if self.stop.is_set() or time.monotonic() - failing_since > self.patience:
                    raise BrokerGone(f"could not publish for {time.monotonic() - failing_since:.0f}s: {exc!r}") from exc
                time.sleep(0.5)


def collect_events(settings: settings_mod.Settings, record: Record, stop: threading.Event) -> None:
    """Consume position_updated during the whole run: (message id) and (asset, mode, version)."""
    broker = Broker(settings, "collector")

    def on_message(channel, method, props, body):
        try:
            event = json.loads(body)
            key = (str(event.get("asset")), str(event.get("mode")), int(event.get("version")))
        except (ValueError, TypeError):
            key = None
        with record.lock:
            record.seen_events.add(props.message_id or "")
            if key:
                record.seen_versions.add(key)
        channel.basic_ack(method.delivery_tag)

    while not stop.is_set():
        try:
            channel = broker.ensure()
            channel.basic_qos(prefetch_count=500)
            channel.basic_consume(settings.position_updated_queue, on_message)
            while not stop.is_set():
                broker.conn.process_data_events(time_limit=0.5)
        except (pika.exceptions.AMQPError, OSError):
            broker.close()
            stop.wait(0.5)
    broker.close()


def sample(settings: settings_mod.Settings, record: Record, stop: threading.Event, interval: float) -> None:
    """Every `interval` s: queue depths (ready messages), ledger rows, outbox backlog, published so far."""
    broker = Broker(settings, "sampler")
    db: psycopg.Connection | None = None
    while not stop.wait(interval):
        point: dict = {"t": round(record.now(), 2)}
        try:
            channel = broker.ensure()
            point["order_depth"] = channel.queue_declare(settings.order_queue, passive=True).method.message_count
            point["position_depth"] = channel.queue_declare(
                settings.position_queue, passive=True).method.message_count
        except (pika.exceptions.AMQPError, OSError):
            broker.close()
            point["order_depth"] = point["position_depth"] = None
        try:
            if db is None or db.closed or db.broken:
                db = appdb.connect(settings, autocommit=True)
            row = db.execute(q("soak_sample")).fetchone()
            point["ledger_rows"], point["outbox_pending"], point["dead_letters"] = row
        except psycopg.Error:
            if db is not None:
                db.close()
            db = None
            point["ledger_rows"] = point["outbox_pending"] = point["dead_letters"] = None
        with record.lock:
            if point["t"] > record.now() + 0.01:     # taken before the traffic's clock was reset
                continue
            point["published"] = len(record.published)
            point["api_requests"] = len(record.api)
            record.api_non_200 += sum(1 for r in record.api[record.api_scanned:] if r[2] != 200)
            record.api_scanned = len(record.api)
            point["api_non_200"] = record.api_non_200
            record.samples.append(point)
    broker.close()
    if db is not None:
        db.close()


# ------------------------------------------------------------------------------------------------
# API clients
# ------------------------------------------------------------------------------------------------

def api_client(base: str, assets: list[str], record: Record, stop: threading.Event, think: float, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    session.headers["X-API-Key"] = API_KEY
    endpoints = [("portfolio", "/api/v1/portfolio"), ("positions", "/api/v1/positions?limit=100"),
                 ("position", None), ("position", None), ("exposure", "/api/v1/portfolio/exposure")]
    while not stop.is_set():
        name, path = rng.choice(endpoints)
        if path is None:
            path = f"/api/v1/positions/{rng.choice(assets)}"
        t = record.now()
        started = time.perf_counter()
        try:
            status = session.get(base + path, timeout=15).status_code
        except requests.RequestException:
            status = 0
            session.close()
            session = requests.Session()
            session.headers["X-API-Key"] = API_KEY
        with record.lock:
            record.api.append((round(t, 3), name, status, time.perf_counter() - started))
        stop.wait(think)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.record = Record()
        self.stop_traffic = threading.Event()
        self.stop_all = threading.Event()
        self.threads: list[threading.Thread] = []
        self.pg: PrivatePostgres | None = None
        self.mq: PrivateRabbit | None = None
        self.api: Service | None = None
        self.consume: Service | None = None
        self.traffic = Traffic(seed=args.seed)
        self.rng = random.Random(args.seed + 1)
        self._cleaned = False
        self.fault_thread: threading.Thread | None = None

    # ---- servers and processes -----------------------------------------------------------------

    def start(self) -> None:
        log("starting a private PostgreSQL and a private RabbitMQ node ...")
        self.mq = PrivateRabbit()
        rabbit_start = threading.Thread(target=self._start_rabbit, daemon=True)
        rabbit_start.start()                    # the slow one (an Erlang VM), beside initdb
        self.pg = PrivatePostgres()
        self.pg.start()
        rabbit_start.join()
        if self.rabbit_error is not None:
            raise RuntimeError(f"private RabbitMQ: {self.rabbit_error}")
        self.api_port = free_port()
        env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(self.pg.port), "POSTGRES_DB": "pm_soak",
               "POSTGRES_USER": "postgres", "RABBITMQ_HOST": "127.0.0.1", "RABBITMQ_PORT": str(self.mq.port),
               "RABBITMQ_VHOST": "/", "RABBITMQ_USER": "guest", "RABBITMQ_PASSWORD": "guest",
               "POSITION_MANAGER_PORT": str(self.api_port), "POSITION_MANAGER_API_KEY": API_KEY,
               "POSITION_MANAGER_API_WORKERS": str(self.args.api_workers), "POSITION_MANAGER_API_THREADS": "4",
               "POSITION_MANAGER_RATE_LIMIT_DEFAULT": "1000000",
               "POSITION_MANAGER_LOG_LEVEL": self.args.log_level,
               "POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL": "1",
               # the exchange's average price would be adopted as an avg_correction: a deliberate
               # departure from the fold of the fills, tested in tests/sql; here the fills own it all
               "POSITION_MANAGER_USE_WS_AVG_PRICE": "false"}
        self.settings = settings_mod.load(env)
        self.env = common.service_env(self.settings, clean=True, **env)
        log(f"PostgreSQL on :{self.pg.port}, RabbitMQ node {self.mq.node} on :{self.mq.port}; migrating ...")
        migrate.ensure_database(self.settings)
        migrate.apply(self.settings)
        self.log_dir = Path(self.args.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.api = Service("api", [str(ROOT / "bin" / "serve")], self.env, self.log_dir)
        self.consume = Service("consume", [str(ROOT / "bin" / "consume")], self.env, self.log_dir)
        self.api.start()
        self.consume.start()
        wait_http(f"http://127.0.0.1:{self.api_port}/health", self.args.startup_timeout, self.api)
        self._wait(lambda: len(self.consume.children("consumers")) == 3, self.args.startup_timeout,
                   "bin/consume's three children")
        log(f"API on :{self.api_port} ({self.args.api_workers} workers), consumers and relay running")

    def _start_rabbit(self) -> None:
        self.rabbit_error = None
        try:
            self.mq.start(timeout=self.args.startup_timeout)
        except Exception as exc:  # noqa: BLE001 - reported by start()
            self.rabbit_error = exc

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self.stop_traffic.set()
        self.stop_all.set()
        if self.fault_thread is not None:
            self.fault_thread.join(timeout=120)   # a restart in progress finishes before its server is destroyed
        for service in (self.consume, self.api):
            if service is not None:
                service.stop(timeout=20)
        for server in (self.mq, self.pg):
            if server is not None:
                try:
                    server.destroy()
                except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                    log(f"could not stop {type(server).__name__}: {exc!r}")

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.2)

    def _count(self, name: str) -> int | None:
        try:
            with appdb.connect(self.settings, autocommit=True) as conn:
                return conn.execute(q(name)).fetchone()[0]
        except psycopg.Error:
            return None

    # ---- faults ----------------------------------------------------------------------------------

    def schedule(self) -> list[Fault]:
        """Every kind once per 150 s (at least once), spread from 10% to 75% of the duration, so that
        the recovery from the last one happens under traffic too."""
        rounds = max(1, int(self.args.duration // 150))
        kinds = [k for _ in range(rounds) for k in FAULT_KINDS]
        first, span = 0.10 * self.args.duration, 0.65 * self.args.duration
        return [Fault(kind, round(first + span * i / (len(kinds) - 1), 1)) for i, kind in enumerate(kinds)]

    def run_faults(self) -> None:
        pg_rounds = 0
        for fault in self.record.faults:
            while self.record.now() < fault.at:
                if self.stop_all.wait(0.1):
                    return
            fault.t_start = self.record.now()
            log(f"fault: {fault.kind}")
            try:
                if fault.kind == "consumer_kill":
                    fault.detail = self._kill_child(self.consume, "consumers order")
                elif fault.kind == "relay_kill":
                    fault.detail = self._kill_child(self.consume, "consumers relay")
                elif fault.kind == "api_worker_kill":
                    fault.detail = self._kill_child(self.api, "", expect=self.args.api_workers)
                elif fault.kind == "rabbitmq_restart":
                    self.mq.stop()
                    self.mq.start(timeout=self.args.startup_timeout)
                    fault.detail = f"rabbitmqctl stop, then started again on :{self.mq.port}"
                elif fault.kind == "postgres_restart":
                    mode = ("immediate", "fast")[pg_rounds % 2]
                    pg_rounds += 1
                    self.pg.stop(mode)
                    time.sleep(self.args.pg_down)
                    self.pg.start()
                    fault.detail = f"pg_ctl stop -m {mode}, down {self.args.pg_down:.0f}s, started again"
                fault.ok = True
            except Exception as exc:  # noqa: BLE001 - a failed injection is reported, not fatal here
                fault.detail = f"injection failed: {exc!r}"
            fault.t_end = self.record.now()
            log(f"fault: {fault.kind} done in {fault.t_end - fault.t_start:.1f}s ({fault.detail})")

    def _kill_child(self, service: Service, contains: str, expect: int = 1) -> str:
        """SIGKILL one child of `service`, then wait until its parent replaced it."""
        before = service.children(contains)
        if not before:
            raise RuntimeError(f"no child '{contains}' of {service.name}")
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        self._wait(lambda: (lambda now: len(now) >= expect and victim not in now)(service.children(contains)),
                   60, f"{service.name} to replace pid {victim}")
        new = sorted(set(service.children(contains)) - set(before))
        return f"SIGKILL pid {victim}; replaced by pid {', '.join(map(str, new)) or '?'}"

    # ---- traffic ---------------------------------------------------------------------------------

    def drive(self, publisher: Publisher) -> None:
        args, rng = self.args, self.rng
        delayed: list[tuple[float, list[Message]]] = []    # reordered units and duplicates, due time
        started = time.monotonic()
        orders = positions = 0

        def emit(messages: list[Message]) -> None:
            for msg in messages:
                publisher.publish(msg)
                if not msg.kind.startswith("poison") and rng.random() < args.duplicates:
                    dup = Message(msg.role, msg.body, msg.message_id, msg.kind, msg.executions, msg.message_id)
                    delayed.append((time.monotonic() + rng.uniform(0.1, 3.0), [dup]))

        while not self.stop_traffic.is_set():
            elapsed = time.monotonic() - started
            # traffic goes on until the duration is over AND every fault has ended (a slow restart
            # does not leave its recovery unobserved)
            if elapsed >= args.duration and all(f.t_end is not None for f in self.record.faults):
                break
            while orders < int(elapsed * args.order_rate):
                orders += 1
                unit = self.traffic.order_unit()
                if unit.reorderable and rng.random() < args.reordered:
                    delayed.append((time.monotonic() + rng.uniform(0.3, 2.0), unit.messages))
                else:
                    emit(unit.messages)
                if rng.random() < args.poison:
                    emit([self.traffic.poison()])
            while positions < int(elapsed * args.position_rate):
                positions += 1
                msg = self.traffic.position_event()
                if rng.random() < args.reordered:
                    delayed.append((time.monotonic() + rng.uniform(0.3, 2.0), [msg]))
                else:
                    emit([msg])
                if rng.random() < args.poison:
                    emit([self.traffic.poison()])
            now = time.monotonic()
            due = [d for d in delayed if d[0] <= now]
            delayed[:] = [d for d in delayed if d[0] > now]
            for _, messages in sorted(due, key=lambda d: d[0]):
                emit(messages)
            time.sleep(0.02)
        # the producers' buffers: everything held back goes out now (their duplicates too)
        while delayed:
            batch, delayed[:] = sorted(delayed, key=lambda d: d[0]), []
            for _, messages in batch:
                emit(messages)

    def run(self) -> int:
        args = self.args
        self.start()
        record = self.record
        publisher = Publisher(self.settings, record, self.stop_all)
        publisher.patience = args.startup_timeout + 60
        self.threads.append(threading.Thread(target=collect_events, args=(self.settings, record, self.stop_all),
                                             daemon=True, name="collector"))
        self.threads.append(threading.Thread(target=sample, args=(self.settings, record, self.stop_all, 1.0),
                                             daemon=True, name="sampler"))
        for t in self.threads:
            t.start()

        log("warm-up: one execution per asset, so that every position exists before exchange events")
        for msg in self.traffic.warmup():
            publisher.publish(msg)
        self._wait(lambda: (self._count("soak_positions_count") or 0) >= len(self.traffic.assets), 60,
                   "the warm-up positions")

        with record.lock:                       # the time series starts with the traffic
            record.t0 = time.monotonic()
            record.samples.clear()
        record.faults = self.schedule()
        base = f"http://127.0.0.1:{self.api_port}"
        for i in range(args.api_clients):
            t = threading.Thread(target=api_client, args=(base, self.traffic.assets, record, self.stop_traffic,
                                                          args.api_think, args.seed + 100 + i),
                                 daemon=True, name=f"api-{i}")
            t.start()
            self.threads.append(t)
        fault_thread = self.fault_thread = threading.Thread(target=self.run_faults, daemon=True, name="faults")
        fault_thread.start()
        log(f"traffic for {args.duration:.0f}s: {args.order_rate:g} order units/s, {args.position_rate:g} "
            f"position events/s, {args.api_clients} API clients; faults at "
            + ", ".join(f"{f.at:.0f}s {f.kind}" for f in record.faults))
        self.drive(publisher)
        fault_thread.join()        # a fault still in progress completes (a server comes back)
        self.stop_traffic.set()
        self.traffic_end = record.now()
        log(f"traffic done at {self.traffic_end:.0f}s ({len(record.published)} messages published); draining ...")
        drained = self.drain(args.drain_timeout)
        checks = self.check(drained)
        self.stop_all.set()
        publisher.broker.close()
        return self.report(checks)

    # ---- the end -------------------------------------------------------------------------------

    def expected(self) -> tuple[dict[str, Message], set[str], dict[str, list]]:
        """Published originals by message id, poison message ids, executions per asset."""
        originals: dict[str, Message] = {}
        for _, msg in self.record.published:
            originals.setdefault(msg.message_id, msg)
        poison = {mid for mid, m in originals.items() if m.kind.startswith("poison")}
        per_asset: dict[str, list] = defaultdict(list)
        for msg in originals.values():
            for e in msg.executions:
                per_asset[e.asset].append(e)
        return originals, poison, per_asset

    def drain(self, timeout: float) -> bool:
        _, poison, per_asset = self.expected()
        want_rows = sum(len(v) for v in per_asset.values())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.record.samples[-1] if self.record.samples else {}
            if (s.get("ledger_rows") == want_rows and s.get("outbox_pending") == 0 and s.get("order_depth") == 0
                    and s.get("position_depth") == 0 and (s.get("dead_letters") or 0) >= len(poison)):
                ids = self._outbox_ids()
                if ids is not None and ids <= self.record.seen_events:
                    log(f"drained {self.record.now() - self.traffic_end:.1f}s after the traffic stopped")
                    return True
            time.sleep(0.5)
        log(f"NOT drained within {timeout:.0f}s; checking what is there")
        return False

    def _outbox_ids(self) -> set[str] | None:
        try:
            with appdb.connect(self.settings, autocommit=True) as conn:
                return {r[0] for r in conn.execute(q("soak_position_events"))}
        except psycopg.Error:
            return None

    def check(self, drained: bool) -> list[tuple[str, bool, str]]:
        record = self.record
        originals, poison, per_asset = self.expected()
        checks: list[tuple[str, bool, str]] = [("drained within the deadline", drained,
                                                f"--drain-timeout {self.args.drain_timeout:.0f}s")]
        with appdb.connect(self.settings, autocommit=True) as conn:
            ledger = {k: kind for k, kind in conn.execute(q("soak_ledger_keys"))}
            rows = conn.execute(q("soak_positions_with_fold")).fetchall()
            outbox = conn.execute(q("soak_position_events")).fetchall()

        # 1. the ledger holds exactly the published executions
        want = {e.key: e.kind for es in per_asset.values() for e in es}
        lost, extra = set(want) - set(ledger), set(ledger) - set(want)
        checks.append(("ledger = published executions (zero lost, zero extra)", not lost and not extra,
                       f"{len(want)} published, {len(ledger)} in the ledger, {len(lost)} lost, {len(extra)} extra"
                       + (f"; lost e.g. {sorted(lost)[:3]}" if lost else "") + (f"; extra e.g. {sorted(extra)[:3]}" if extra else "")))

        # 2. every position = the Python fold of what was published = pm.fold_ledger
        wrong, wrong_ledger, seen_assets = [], [], set()
        newest_mark: dict[str, tuple] = {}
        for msg in originals.values():
            if msg.mark and msg.mark[1:3] > newest_mark.get(msg.mark[0], (0, 0, None))[:2]:
                newest_mark[msg.mark[0]] = msg.mark[1:]
        wrong_price = []
        for (asset, mode, size, avg, realized, l_size, l_avg, s_size, s_avg, price,
             f_size, f_avg, f_realized, fl_size, fl_avg, fs_size, fs_avg) in rows:
            seen_assets.add(asset)
            if asset in newest_mark and price != newest_mark[asset][2]:
                wrong_price.append(f"{asset}: {price}, newest mark {newest_mark[asset][2]}")
            if mode == "one-way":
                stored = (size, avg, realized or 0)
                expect = fold(per_asset.get(asset, []))
                ledger_fold = (f_size, f_avg, f_realized or 0)
            else:
                stored = (size, l_size or 0, l_avg, s_size or 0, s_avg, realized or 0)
                expect = fold_hedge(per_asset.get(asset, []))
                ledger_fold = (f_size, fl_size or 0, fl_avg, fs_size or 0, fs_avg, f_realized or 0)
            if expect != stored:
                wrong.append(f"{asset}/{mode}: stored {tuple(map(str, stored))}, fold {tuple(map(str, expect))}")
            if ledger_fold != stored:
                wrong_ledger.append(f"{asset}/{mode}")
        missing = set(per_asset) - seen_assets
        checks.append(("every position = Python fold of the published executions (Decimal, exact)",
                       not wrong and not missing,
                       f"{len(rows)} positions; {len(wrong)} differ, {len(missing)} missing"
                       + (f"; e.g. {wrong[0]}" if wrong else "")))
        checks.append(("every position = pm.fold_ledger of its ledger", not wrong_ledger,
                       f"{len(wrong_ledger)} differ" + (f": {wrong_ledger[:3]}" if wrong_ledger else "")))
        checks.append(("every current price = the mark of the newest position event (late ones stale)",
                       not wrong_price and len(newest_mark) > 0,
                       f"{len(newest_mark)} positions priced by the exchange stream; {len(wrong_price)} differ"
                       + (f"; e.g. {wrong_price[0]}" if wrong_price else "")))

        # 3. every audited change reached position_updated
        with record.lock:
            seen_ids, seen_versions = set(record.seen_events), set(record.seen_versions)
        missing_ids = {r[0] for r in outbox} - seen_ids
        missing_versions = {(a, m, v) for _, a, m, v in outbox} - seen_versions
        checks.append(("every committed change published on position_updated",
                       not missing_ids and not missing_versions,
                       f"{len(outbox)} audited changes; {len(seen_ids)} distinct events received; "
                       f"{len(missing_ids)} changes never published"))

        # 4. the dead-letter queue holds exactly the poison messages
        dead = self._drain_dead_letters()
        dead_ids = Counter(dead)
        checks.append(("dead-letter queue = the poison messages", set(dead_ids) == poison,
                       f"{len(poison)} poison published, {len(dead)} dead letters ({len(dead_ids)} distinct); "
                       f"{len(poison - set(dead_ids))} missing, {len(set(dead_ids) - poison)} unexpected"
                       + (f", {sum(n - 1 for n in dead_ids.values())} repeated (at-least-once)"
                          if any(n > 1 for n in dead_ids.values()) else "")))

        # 5. the API: no 5xx but 503, and 503 (or no answer) only inside the fault windows
        pg_windows = [(f.t_start, f.t_end + PG_GRACE) for f in record.faults if f.kind == "postgres_restart" and f.t_end]
        worker_windows = [(f.t_start - 0.5, f.t_end + WORKER_GRACE) for f in record.faults
                          if f.kind == "api_worker_kill" and f.t_end]
        statuses = Counter(s for _, _, s, _ in record.api)
        bad = []
        for t, name, status, took in record.api:
            # a request overlapping a window (sent just before the fault began counts too)
            inside_pg = any(a <= t + took and t <= b for a, b in pg_windows)
            inside_worker = any(a <= t + took and t <= b for a, b in worker_windows)
            if status in (200, 304):
                continue
            if status == 503 and inside_pg:
                continue
            if status == 0 and inside_worker:     # the killed worker's requests in flight
                continue
            bad.append((t, name, status))
        checks.append(("API: no 5xx but 503, 503 only while PostgreSQL was down", not bad,
                       f"{len(record.api)} requests: " + ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(statuses.items()))
                       + (f"; unexpected e.g. {bad[:3]}" if bad else "")))

        # 6. every fault injected, and the queues drained after each
        threshold = max(20, int(self.args.order_rate + self.args.position_rate))
        for f in record.faults:
            if f.t_end is None:
                continue
            # lag = messages waiting for the consumers AND changes waiting for the relay
            for s in record.samples:
                if s["t"] < f.t_start or s.get("order_depth") is None or s.get("outbox_pending") is None:
                    continue
                f.peak_backlog = max(f.peak_backlog or 0, s["order_depth"] + s["position_depth"] + s["outbox_pending"])
                if (s["t"] >= f.t_end and s["order_depth"] + s["position_depth"] <= threshold
                        and s["outbox_pending"] <= threshold):
                    f.recovered_after = round(s["t"] - f.t_end, 1)
                    break
        checks.append(self._unplanned_exits())
        kinds_ok = {f.kind for f in record.faults if f.ok}
        checks.append(("every fault injected at least once", kinds_ok == set(FAULT_KINDS),
                       f"{sum(f.ok for f in record.faults)}/{len(record.faults)} injected; missing: "
                       f"{sorted(set(FAULT_KINDS) - kinds_ok) or 'none'}"))
        slow = [f for f in record.faults if f.recovered_after is None or f.recovered_after > self.args.lag_deadline]
        checks.append((f"lag back to ~0 (<= {threshold} ready messages and unrelayed changes) within "
                       f"{self.args.lag_deadline:.0f}s of each fault",
                       not slow, ", ".join(f"{f.kind} {f.recovered_after if f.recovered_after is not None else 'never'}s"
                                           for f in record.faults)))
        return checks

    def _unplanned_exits(self) -> tuple[str, bool, str]:
        """Every process exit during the run was one the soak caused: the supervisor restarted the
        order consumer once per consumer kill, the relay once per relay kill, the position consumer
        never (a database or broker restart must not crash anything); gunicorn reaped exactly the
        workers killed, and no worker timed out."""
        faults = Counter(f.kind for f in self.record.faults if f.ok)
        restarts: Counter = Counter()
        for line in self.consume.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "child exited, restarting":
                restarts[entry.get("role")] += 1
        api_log = self.api.log_path.read_text(errors="replace")
        reaped = len(re.findall(r"Worker \(pid:\d+\) was sent SIGKILL", api_log))
        timeouts = api_log.count("WORKER TIMEOUT")
        expected = {"order": faults["consumer_kill"], "relay": faults["relay_kill"], "position": 0}
        ok = all(restarts[role] == n for role, n in expected.items()) and reaped == faults["api_worker_kill"] \
            and timeouts == 0
        return ("no process exit but the ones injected", ok,
                "restarts by the supervisor: " + ", ".join(f"{r} {restarts[r]} (expected {n})" for r, n in expected.items())
                + f"; gunicorn workers killed {reaped} (expected {faults['api_worker_kill']}), timed out {timeouts}")

    def _drain_dead_letters(self) -> list[str]:
        broker = Broker(self.settings, "dlq")
        out = []
        try:
            channel = broker.ensure()
            while True:
                method, props, body = channel.basic_get(self.settings.dead_letter_queue, auto_ack=True)
                if method is None:
                    break
                out.append(props.message_id or (props.headers or {}).get("x-original-message-id") or "")
        finally:
            broker.close()
        return out

    def report(self, checks: list[tuple[str, bool, str]]) -> int:
        record, args = self.record, self.args
        print()
        print(f"{'fault':18} {'at s':>6} {'took s':>7} {'peak backlog':>13} {'back to ~0 after s':>19}  detail")
        for f in record.faults:
            took = f"{f.t_end - f.t_start:.1f}" if f.t_end is not None and f.t_start is not None else "-"
            rec = "-" if f.recovered_after is None else f"{f.recovered_after:.1f}"
            print(f"{f.kind:18} {f.t_start or 0:6.1f} {took:>7} {f.peak_backlog if f.peak_backlog is not None else '-':>13} "
                  f"{rec:>19}  {f.detail}")
        kinds = Counter(m.kind.split(":")[0] + ("(dup)" if m.duplicate_of else "") for _, m in record.published)
        latencies = sorted(s for _, _, st, s in record.api if st == 200)
        pct = quantiles(latencies, n=100) if len(latencies) > 2 else [0] * 99
        print()
        print("published: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        print(f"API: {len(record.api)} requests, p50 {pct[49] * 1000:.1f} ms, p99 {pct[98] * 1000:.1f} ms (200s)")
        print()
        width = max(len(c[0]) for c in checks)
        print(f"{'check':{width}}  result  detail")
        for name, ok, detail in checks:
            print(f"{name:{width}}  {'PASS' if ok else 'FAIL':6}  {detail}")
        passed = all(ok for _, ok, _ in checks)
        print()
        print(f"SOAK {'PASSED' if passed else 'FAILED'}: {args.duration:.0f}s, "
              f"{sum(len(m.executions) for _, m in record.published if not m.duplicate_of)} executions, "
              f"{sum(f.ok for f in record.faults)} faults")
        executions = sum(len(m.executions) for _, m in record.published if not m.duplicate_of)
        recovered = [f.recovered_after for f in record.faults if f.recovered_after is not None]
        peaks = [f.peak_backlog for f in record.faults if f.peak_backlog is not None]
        figures = [
            figure("executions", "executions published, each found once in the ledger and in the fold", executions,
                   "executions"),
            figure("faults", "faults injected (consumer, relay and API worker killed, PostgreSQL and RabbitMQ "
                             "restarted)", sum(f.ok for f in record.faults), "faults"),
            figure("api_p50", "API latency under faults, p50 of the 200s", pct[49] * 1000, "ms"),
            figure("api_p99", "API latency under faults, p99 of the 200s", pct[98] * 1000, "ms"),
            figure("recovery_max", "slowest return of the backlog to ~0 after a fault ended",
                   max(recovered) if recovered else None, "s"),
            figure("peak_backlog_max", "largest backlog after a fault (ready messages + unrelayed changes)",
                   max(peaks) if peaks else None, "messages"),
        ]
        params = {k: v for k, v in vars(args).items() if k not in ("json", "log_dir")}
        path = common.write_result(
            "soak", command=command_line(args), params=params, passed=passed, figures=figures, path=args.json,
            detail={"traffic_end": self.traffic_end, "faults": [asdict(f) for f in record.faults],
                    "checks": [list(c) for c in checks], "published": dict(kinds), "timeseries": record.samples,
                    "api": {"requests": len(record.api),
                            "statuses": {str(k): v for k, v in Counter(s for _, _, s, _ in record.api).items()},
                            "p50_ms": pct[49] * 1000, "p90_ms": pct[89] * 1000, "p99_ms": pct[98] * 1000}})
        print(f"(record written to {path}; process logs in {args.log_dir})")
        if not passed:
            for service in (self.consume, self.api):
                if service is not None:
                    print(f"---- last lines of {service.log_path}")
                    print(service.tail(20))
        return 0 if passed else 1


def command_line(args: argparse.Namespace) -> str:
    """`bench/soak` with the options of this run that differ from what --duration alone implies."""
    implied = vars(parse_args(["--duration", f"{args.duration:g}"]))
    parts = ["bench/soak", "--duration", f"{args.duration:g}"]
    for key, value in vars(args).items():
        if key not in ("duration", "json", "log_dir") and value != implied[key]:
            parts += [f"--{key.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/soak", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (default 300)")
    ap.add_argument("--order-rate", type=float, default=20.0, help="order units per second (default 20)")
    ap.add_argument("--position-rate", type=float, default=20.0, help="position events per second (default 20)")
    ap.add_argument("--duplicates", type=float, default=0.10, help="share published twice (default 0.10)")
    ap.add_argument("--reordered", type=float, default=0.10, help="share held back behind newer ones (default 0.10)")
    ap.add_argument("--poison", type=float, default=0.01, help="poison messages per message (default 0.01)")
    ap.add_argument("--api-clients", type=int, default=4)
    ap.add_argument("--api-think", type=float, default=0.05, help="seconds between one client's requests")
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--pg-down", type=float, default=3.0, help="seconds PostgreSQL stays down (default 3)")
    ap.add_argument("--drain-timeout", type=float, default=None, help="default: 60s, 120s from 5 minutes on")
    ap.add_argument("--lag-deadline", type=float, default=None,
                    help="max seconds from the end of a fault until the queues are back to ~0 (default 30; 60 from 5 minutes on)")
    ap.add_argument("--startup-timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                    help="of our processes (default WARNING; the exit check reads their ERROR lines)")
    ap.add_argument("--json", default=None, help="where to write the record (default bench/results/soak.json)")
    ap.add_argument("--log-dir", default=None, help="process logs (default bench/out/soak-logs)")
    args = ap.parse_args(argv)
    long_run = args.duration >= 300
    if args.drain_timeout is None:
        args.drain_timeout = 120.0 if long_run else 60.0
    if args.lag_deadline is None:
        args.lag_deadline = 60.0 if long_run else 30.0
    if args.log_dir is None:
        args.log_dir = str(common.OUT / "soak-logs")
    if args.duration < 10:
        ap.error("--duration must be at least 10 seconds (five faults are spread over it)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    soak = Soak(args)
    atexit.register(soak.cleanup)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        return soak.run()
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, then the cleanup
        log(f"ERROR: {exc}")
        return 2
    finally:
        log("stopping the API, the consumers and the private servers ...")
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
