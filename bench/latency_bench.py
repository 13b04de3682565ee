#!/usr/bin/env python3
"""Latency: from publishing a message to its position row and to its position_updated event.

The real pipeline on a fresh database and the broker: `bin/consume order`, `bin/consume position`,
`bin/consume relay` and the API under gunicorn (`bin/serve`), each a process of its own. Three kinds
of input, each on a symbol of its own that nothing else touches:

  execution   an order-manager execution (shape A) published to the order queue
  position    a ws-gateway position envelope (Bybit's position record inside) published to the
              position queue; each one carries a new mark price, so each changes the position
  price       POST /api/v1/prices {"SYMBOL": "price"} through gunicorn (the time of its HTTP answer
              is kept too)

For every input two times, both from the moment just before it was published (or sent):

  row    the position row reflecting it: a watcher process LISTENs on pm_outbox (the outbox insert
         trigger notifies at commit, in the transaction that writes the row); at each notification
         it reads the probe symbols' versions (one indexed SELECT) and stamps a new version with the
         time that SELECT returned. So the figure includes one notification and one query, never a
         poll interval: their cost is recorded (detail.listen_query_ms).
  event  the position_updated event arriving on a queue of our own bound to the run's events
         exchange with routing key position_updated, as any new subscriber binds one (another
         watcher process, stamping each delivery as pika hands it over).

Watchers and the background publisher are processes of their own (no GIL shared with the one that
times); the times are CLOCK_MONOTONIC, common to every process of the machine. The watcher also
reads the service's own position_updated queue, as model-service does, so it does not pile up.

Phases, in one run:

  idle      --samples inputs of each kind, one at a time (the next one only once the previous one's
            row and event were seen), spaced by --spacing seconds (jittered +-50%)
  capacity  a burst of --burst executions (over 50 other symbols) published at once into the running
            pipeline; capacity = burst / (first publish to: all in the ledger AND the outbox relayed)
  load      a paced background publisher (a process) sends executions of those 50 symbols at
            --load-fraction (0.5) of that capacity; after --warmup seconds the same probes as at idle
            run beside it; afterwards the backlog must drain

While sampling under load it records the cores each process used (and what the rest of the
machine took), and from the roles' heartbeats (every second in this run, POSITION_MANAGER_HEARTBEAT_INTERVAL
unless given) the order consumer's and the relay's batches: how many, their mean size and time.

At the end the ledger must hold every execution published (probes, burst, background), there must be
no dead letter and every probe must have been seen at both ends: otherwise the run fails. The
latency targets (p99 at most 50 ms at idle, 250 ms under the load) are reported, not enforced.

    bench/run latency                   # 200 inputs of each kind per phase (~3 minutes)
    bench/run latency --samples 50      # a quicker look

Writes bench/results/latency.json (--json FILE elsewhere). Creates and drops its own database and queues.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_mod
import random
import shlex
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pika  # noqa: E402
import requests  # noqa: E402

from app import broker  # noqa: E402
from app import db as appdb  # noqa: E402
from app import settings as settings_mod  # noqa: E402
from app.api.keys import new_key  # noqa: E402
from bench import common  # noqa: E402
from bench.common import figure, q, reference  # noqa: E402

T0 = datetime(2026, 2, 2, tzinfo=timezone.utc)
KINDS = ("execution", "position", "price")
KIND_LABEL = {"execution": "execution (order queue)",
              "position": "exchange position event (position queue)",
              "price": "price push (POST /api/v1/prices)"}
ASSETS = {"execution": "LATORDUSDT", "position": "LATPOSUSDT", "price": "LATPXUSDT"}
ENDS = ("row", "event")
END_LABEL = {"row": "position row updated", "event": "position_updated event received"}
PHASES = ("idle", "load")
TARGET_MS = {"idle": 50.0, "load": 250.0}      # p99, the requirement
BACKGROUND_ASSETS = 50
TUNING = ("POSITION_MANAGER_CONSUMER_BATCH_SIZE", "POSITION_MANAGER_CONSUMER_PREFETCH",
          "POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL", "POSITION_MANAGER_LOG_LEVEL",
          "POSITION_MANAGER_HEARTBEAT_INTERVAL")


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

class Probes:
    """The probes' inputs, each one later than the last of its kind and each one a change."""

    def __init__(self, run: str) -> None:
        self.run, self.n = run, 0

    def execution(self, asset: str = ASSETS["execution"]) -> bytes:
        self.n += 1
        n = self.n
        return json.dumps({
            "event_id": str(uuid.uuid4()), "event_type": "order_executed", "execution_id": f"lat-{self.run}-{n}",
            "order_id": f"lat-{self.run}-o{n}", "asset": asset, "side": "Sell" if n % 3 == 0 else "Buy",
            "execution_quantity": "0.010", "execution_price": f"{100 + n % 7}.5", "execution_fees": "0.0005",
            "executed_at": iso(T0 + timedelta(seconds=n)), "trace_id": f"lat-execution-{n}"}).encode()

    def position(self) -> bytes:
        """ws-gateway's envelope around Bybit's position record (docs/contract.md, shape A)."""
        self.n += 1
        n, at = self.n, T0 + timedelta(seconds=self.n)
        mark = f"{100 + n % 50 / 10:.1f}"
        upnl = f"{float(mark) - 100:.1f}"
        millis = str(int(at.timestamp() * 1000))
        raw = {"positionIdx": 0, "symbol": ASSETS["position"], "side": "Buy", "size": "1", "entryPrice": "100",
               "markPrice": mark, "unrealisedPnl": upnl, "cumRealisedPnl": "0", "updatedTime": millis, "seq": n,
               "positionStatus": "Normal", "leverage": "10"}
        return json.dumps({
            "event_id": str(uuid.uuid4()), "event_type": "position", "topic": "position", "timestamp": iso(at),
            "received_at": iso(at + timedelta(milliseconds=10)), "trace_id": f"lat-position-{n}",
            "payload": {"symbol": ASSETS["position"], "size": "1", "side": "Buy", "avg_price": None,
                        "unrealised_pnl": upnl, "realised_pnl": "0", "mode": 0, "timestamp": iso(at),
                        "raw": raw}}).encode()

    def price(self) -> dict:
        self.n += 1
        return {ASSETS["price"]: f"{200 + self.n % 50 / 10:.1f}"}


class Flow:
    """The background executions (and the capacity burst): shape A over 50 symbols, ~10..5,000 USDT
    each, in time order; body(i) is the i-th of them."""

    def __init__(self, run: str, seed: int) -> None:
        self.run, self.rng = run, random.Random(seed)
        self.symbols = [f"BG{i:02d}USDT" for i in range(BACKGROUND_ASSETS)]
        self.price = {s: 10 ** self.rng.uniform(-1.3, 4.8) for s in self.symbols}

    def body(self, i: int) -> bytes:
        rng = self.rng
        s = rng.choice(self.symbols)
        self.price[s] = max(0.0001, self.price[s] * (1 + rng.uniform(-0.001, 0.001)))
        price = round(self.price[s], 4)
        qty = max(0.001, round(rng.uniform(10, 5000) / price, 3))
        return json.dumps({
            "event_id": str(uuid.uuid4()), "event_type": "order_executed", "execution_id": f"bg-{self.run}-{i}",
            "order_id": f"bg-{self.run}-o{i // 2}", "asset": s, "side": rng.choice(("Buy", "Sell")),
            "execution_quantity": f"{qty:.3f}", "execution_price": f"{price:.4f}",
            "execution_fees": f"{qty * price * 0.00055:.8f}",
            "executed_at": iso(T0 + timedelta(milliseconds=i)), "trace_id": f"bg-{i}"}).encode()


class Templates:
    """The background load's bodies, made cheaply while the load runs (the producers of production
    run on other machines; this one should take as little of this one as it can): 4,096 Flow
    executions made up front, each message one of them with its own execution id, order id, event
    id and time filled in (the time keeps growing, so every symbol's executions stay in time order)."""

    FIELDS = ("event_id", "execution_id", "order_id", "executed_at", "trace_id")

    def __init__(self, run: str, seed: int, count: int = 4096) -> None:
        flow, self.run, self.templates = Flow(run, seed), run, []
        for i in range(count):
            doc = json.loads(flow.body(i))
            text = json.dumps({k: (f"@{k}@" if k in self.FIELDS else v) for k, v in doc.items()}).replace("%", "%%")
            for k in self.FIELDS:
                text = text.replace(f'"@{k}@"', f'"%({k})s"')
            self.templates.append(text)

    def body(self, i: int) -> bytes:
        key = f"bg-{self.run}-{i}"
        return (self.templates[i % len(self.templates)] % {
            "event_id": f"{self.run}-0000-4000-8000-{i & 0xffffffffffff:012x}", "execution_id": key,
            "order_id": f"bg-{self.run}-o{i // 2}", "executed_at": iso(T0 + timedelta(milliseconds=i)),
            "trace_id": key}).encode()


PERSISTENT = pika.BasicProperties(delivery_mode=2, content_type="application/json")


# ------------------------------------------------------------------------------------------------
# Processes beside the one that times (started with spawn: nothing inherited but their arguments)
# ------------------------------------------------------------------------------------------------

def watch_rows(env: dict, out, stop) -> None:
    """LISTEN pm_outbox; at each notification read the probe symbols' versions; report every new
    version (asset, version, time the read returned)."""
    settings = settings_mod.load(env)
    seen: dict[str, int] = {}
    reads: list[float] = []
    with appdb.connect(settings, autocommit=True) as conn:
        conn.execute(q("latency_listen"))
        statement, args = q("latency_probe_versions"), {"assets": list(ASSETS.values())}

        def read() -> None:
            started = time.monotonic()
            rows = conn.execute(statement, args).fetchall()
            now = time.monotonic()
            reads.append(now - started)
            for asset, version in rows:
                if seen.get(asset) != version:
                    seen[asset] = version
                    out.put(("row", asset, version, now))

        read()
        out.put(("ready", "rows", None, None))
        while not stop.is_set():
            notified = False
            for _notify in conn.notifies(timeout=0.2, stop_after=1):
                notified = True
            if notified:
                for _notify in conn.notifies(timeout=0):   # coalesce what is queued already
                    pass
                read()
    out.put(("reads", "rows", common.percentiles([r * 1000 for r in reads]), None))


def watch_events(env: dict, queue_name: str, out, stop) -> None:
    """Our own queue bound to the events exchange (position_updated): report each probe symbol's
    event (asset, version, arrival). Also reads the service's position_updated queue, as
    model-service does, so that it does not pile up during the run."""
    settings = settings_mod.load(env)
    assets = set(ASSETS.values())
    conn = common.mq_connect(settings, "latency-watch-events")
    ch = conn.channel()
    ch.exchange_declare(exchange=settings.events_exchange, exchange_type="topic", durable=True)
    ch.queue_declare(queue_name, exclusive=True, auto_delete=True)
    ch.queue_bind(queue=queue_name, exchange=settings.events_exchange, routing_key="position_updated")
    counts = {"events": 0}

    def on_event(_ch, _method, _props, body: bytes) -> None:
        now = time.monotonic()
        counts["events"] += 1
        if b"LAT" in body:                      # the probe symbols; nothing else has it (hex ids are lower case)
            doc = json.loads(body)
            if doc.get("asset") in assets and doc.get("mode") == "one-way":
                out.put(("event", doc["asset"], int(doc["version"]), now))

    ch.basic_consume(queue_name, on_event, auto_ack=True)
    reader = broker.declare_queue(conn, conn.channel(), settings, settings.position_updated_queue)
    reader.basic_consume(settings.position_updated_queue, lambda *_a: None, auto_ack=True)
    out.put(("ready", "events", None, None))
    while not stop.is_set():
        conn.process_data_events(time_limit=0.2)
    out.put(("events_seen", "events", counts["events"], None))
    conn.close()


def background(env: dict, queue_name: str, rate: float, first: int, seed: int, run: str, sent, running,
               stop) -> None:
    """Publish executions (Flow bodies first, first + 1, ...) at `rate` per second until stopped;
    `sent` holds how many so far."""
    settings = settings_mod.load(env)
    flow = Templates(run, seed)
    conn = common.mq_connect(settings, "latency-background")
    # the channel underneath the blocking one (as app/broker.py's ConfirmingPublisher does): it does
    # not flush the socket after every message; process_data_events sends a tick's messages at once
    ch = conn.channel()._impl  # noqa: SLF001
    started, n = time.monotonic(), 0
    running.set()
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate) - n
        for _ in range(min(due, 500)):
            ch.basic_publish("", queue_name, flow.body(first + n), PERSISTENT)
            n += 1
        conn.process_data_events(time_limit=0)    # sends them, answers the broker's heartbeats
        sent.value = n
        if due <= 0:
            time.sleep(0.002)                     # a 2 ms tick: a plain sleep costs next to nothing
    conn.close()


# ------------------------------------------------------------------------------------------------
# The one that times
# ------------------------------------------------------------------------------------------------

class Timer:
    """Publishes one probe at a time and waits for its row and its event (from the watchers)."""

    def __init__(self, settings, url: str, api_key: str, reports, timeout: float) -> None:
        self.settings, self.url, self.reports, self.timeout = settings, url, reports, timeout
        self.session = requests.Session()
        self.session.headers.update({"X-API-Key": api_key, "Content-Type": "application/json"})
        self.mq = common.mq_connect(settings, "latency-probe")
        self.ch = self.mq.channel()
        self.inputs = Probes(uuid.uuid4().hex[:8])
        self.seen = {end: {a: {} for a in ASSETS.values()} for end in ENDS}   # end -> asset -> version -> time
        self.version = {a: 0 for a in ASSETS.values()}
        self.missed: list[str] = []
        self.published = {"execution": 0}

    def pump(self, wait: float) -> None:
        try:
            kind, asset, version, at = self.reports.get(timeout=max(0.0, wait))
        except queue_mod.Empty:
            return
        if kind in self.seen:
            self.seen[kind][asset].setdefault(version, at)

    def first_after(self, end: str, asset: str, version: int) -> tuple[int, float] | None:
        later = [(v, t) for v, t in self.seen[end][asset].items() if v > version]
        return min(later, key=lambda vt: vt[1]) if later else None

    def send(self, kind: str) -> tuple[float, float | None]:
        """Publish (or POST) one input of `kind`; (time just before, HTTP answer time or None)."""
        if kind == "price":
            body = json.dumps(self.inputs.price())
            t0 = time.monotonic()
            resp = self.session.post(self.url + "/api/v1/prices", data=body, timeout=30)
            answered = time.monotonic() - t0
            if resp.status_code != 200 or resp.json().get("updated") != 1:
                raise RuntimeError(f"POST /api/v1/prices: {resp.status_code} {resp.text[:300]}")
            return t0, answered
        body = self.inputs.execution() if kind == "execution" else self.inputs.position()
        queue = self.settings.order_queue if kind == "execution" else self.settings.position_queue
        t0 = time.monotonic()
        self.ch.basic_publish("", queue, body, PERSISTENT)
        if kind == "execution":
            self.published["execution"] += 1
        return t0, None

    def probe(self, kind: str) -> dict | None:
        """One input; its row and event times in ms, or None (recorded as missed) after the timeout."""
        asset = ASSETS[kind]
        before = self.version[asset]
        t0, http = self.send(kind)
        deadline = t0 + self.timeout
        while True:
            row, event = self.first_after("row", asset, before), self.first_after("event", asset, before)
            if row and event:
                break
            if time.monotonic() > deadline:
                self.missed.append(f"{kind}: {'no row' if not row else ''} {'no event' if not event else ''} "
                                   f"within {self.timeout:.0f}s of version {before}")
                self.version[asset] = max([before, *self.seen["row"][asset], *self.seen["event"][asset]])
                return None
            self.mq.process_data_events(time_limit=0)      # heartbeats of the probe connection
            self.pump(min(0.05, deadline - time.monotonic()))
        self.version[asset] = max(row[0], event[0])
        out = {"row": (row[1] - t0) * 1000, "event": (event[1] - t0) * 1000}
        if http is not None:
            out["http"] = http * 1000
        return out

    def settle(self, asset: str, seconds: float = 0.3) -> None:
        """Take in the reports of a while (a warm-up input's row and event)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.pump(end - time.monotonic())
        self.version[asset] = max([self.version[asset], *self.seen["row"][asset], *self.seen["event"][asset]])

    def series(self, samples: int, spacing: float, rng: random.Random, during=None) -> dict:
        got = {k: {"row": [], "event": [], "http": []} for k in KINDS}
        for i in range(samples * len(KINDS)):
            kind = KINDS[i % len(KINDS)]
            result = self.probe(kind)
            if result is not None:
                for key, ms in result.items():
                    got[kind][key].append(round(ms, 3))
            if during is not None:
                during()
            end = time.monotonic() + spacing * rng.uniform(0.5, 1.5)
            while time.monotonic() < end:
                self.pump(end - time.monotonic())
        return got

    def close(self) -> None:
        self.session.close()
        try:
            self.mq.close()
        except Exception:  # noqa: BLE001 - closing at the end
            pass


def wait_until(predicate, timeout: float, what: str, services) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = [s for s in services if not s.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def counts(conn) -> tuple[int, int]:
    return conn.execute(q("ledger_trades")).fetchone()[0], conn.execute(q("outbox_pending")).fetchone()[0]


def capacity(settings, conn, flow: Flow, n: int, services) -> dict:
    """A burst of n executions into the running pipeline: n / (first publish to all applied and relayed)."""
    bodies = [flow.body(i) for i in range(n)]
    base = counts(conn)[0]
    mq = common.mq_connect(settings, "latency-burst")
    ch = mq.channel()
    t0 = time.monotonic()
    for i, body in enumerate(bodies):
        ch.basic_publish("", settings.order_queue, body, PERSISTENT)
        if i % 2000 == 1999:
            mq.process_data_events(0)
    published = time.monotonic()
    mq.close()
    marks: dict[str, float] = {}

    def done() -> bool:
        ledger, pending = counts(conn)
        if ledger >= base + n and "ledger" not in marks:
            marks["ledger"] = time.monotonic()
        return ledger >= base + n and pending == 0

    wait_until(done, 300, "the burst to be applied and relayed", services)
    relayed = time.monotonic()
    return {"n": n, "rate": n / (relayed - t0), "applied_rate": n / (marks["ledger"] - t0),
            "publish_seconds": published - t0, "seconds": relayed - t0}


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / common.CLK_TCK


def broker_pids() -> list[int]:
    """The RabbitMQ server's Erlang VM (shared with other work on this machine)."""
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
            and b"beam.smp" in (lambda p: p.read_bytes() if p.exists() else b"")(e / "cmdline")]


class CpuShare:
    """CPU of the run's processes, of the broker and of the whole machine between start() and stop(),
    in cores (CPU seconds per second): shows how much of the 2 cores the rest of the machine took.
    A process counts only when it lived through both readings (a restarted broker is not mistaken
    for one that used no CPU)."""

    def __init__(self, db, services, children) -> None:
        self.db, self.services, self.children = db, services, children

    def sample(self) -> dict[str, dict[int, float]]:
        def cpu(pids) -> dict[int, float]:
            return {pid: t for pid in pids if (t := common.cpu_seconds(pid)) is not None}
        out = {f"python {s.name}": cpu([s.pid, *s.children()]) for s in self.services}   # gunicorn: its workers too
        out.update({f"bench {name}": cpu([child.pid]) for name, child in self.children.items()})
        out["postgres backends of the run's database"] = cpu(
            [pid for pid, _query in self.db.execute(q("client_backends")).fetchall()])
        out["rabbitmq (the shared broker)"] = cpu(broker_pids())
        return out

    def start(self) -> None:
        self.t0, self.machine0, self.first = time.monotonic(), machine_busy_seconds(), self.sample()

    def stop(self) -> dict[str, float]:
        last, machine, seconds = self.sample(), machine_busy_seconds(), time.monotonic() - self.t0
        cores = {"machine": round((machine - self.machine0) / seconds, 3)}
        for key, pids in last.items():
            before = self.first.get(key, {})
            cores[key] = round(sum(t - before[pid] for pid, t in pids.items() if pid in before) / seconds, 3)
        ours = sum(v for k, v in cores.items() if k != "machine")
        cores["everything else on the machine"] = round(max(0.0, cores["machine"] - ours), 3)
        return cores


def role_counters(db) -> dict[str, dict[str, float]]:
    """The cumulative counters of each role's heartbeats (app/figures.py), summed over its instances."""
    out: dict[str, dict[str, float]] = {}
    for role, figures in db.execute(q("latency_role_figures")).fetchall():
        acc = out.setdefault(role, {})
        for key, value in (figures or {}).get("counters", {}).items():
            acc[key] = acc.get(key, 0) + value
    return out


def batch_figures(before: dict, after: dict) -> dict:
    """What the order consumer and the relay did between two readings of their heartbeats: batches,
    their mean size and time, and the consumer's mean time from a message's arrival to its ack."""
    def delta(role: str, key: str) -> float:
        return after.get(role, {}).get(key, 0) - before.get(role, {}).get(key, 0)

    def family(role: str, prefix: str) -> float:
        return sum(delta(role, k) for k in after.get(role, {}) if k.startswith(prefix))

    def ratio(a: float, b: float, scale: float = 1.0) -> float | None:
        return round(a / b * scale, 2) if b else None

    batches, messages = delta("order", "batch_seconds_count"), family("order", "messages:")
    relayed, events = delta("relay", "publish_seconds_count"), family("relay", "published:")
    return {"order_batches": batches, "order_messages": messages,
            "order_mean_batch_size": ratio(messages, batches),
            "order_mean_batch_ms": ratio(delta("order", "batch_seconds_sum"), batches, 1000),
            "order_mean_arrival_to_ack_ms": ratio(delta("order", "message_seconds_sum"),
                                                  delta("order", "message_seconds_count"), 1000),
            "order_batches_over_100ms": batches - delta("order", "batch_seconds_bucket:0.1"),
            "relay_batches": relayed, "relay_mean_events_per_batch": ratio(events, relayed),
            "relay_mean_batch_ms": ratio(delta("relay", "publish_seconds_sum"), relayed, 1000),
            "relay_batches_over_100ms": relayed - delta("relay", "publish_seconds_bucket:0.1"),
            "relay_portfolio_events": delta("relay", "published:portfolio_updated")}


def queue_depth(ch, name: str) -> int:
    return ch.queue_declare(name, passive=True).method.message_count


def stats(series: list[float]) -> dict:
    p = common.percentiles(series)
    return {k: (round(v, 3) if k != "n" else v) for k, v in p.items()}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/run latency", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="inputs of each kind per phase (default 200)")
    ap.add_argument("--spacing", type=float, default=0.05, help="seconds between two inputs, jittered +-50%% (0.05)")
    ap.add_argument("--burst", type=int, default=10_000, help="executions of the capacity burst (10,000)")
    ap.add_argument("--load-fraction", type=float, default=0.5, help="background rate as a share of capacity (0.5)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of background load before sampling (3)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds an input may take before it counts as missed")
    ap.add_argument("--seed", type=int, default=7)
    common.add_json_option(ap, "latency")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    base = settings_mod.load()
    tag = f"{os.getpid()}"
    run = uuid.uuid4().hex[:8]
    queues = common.queue_names(f"bench-latency-{tag}")
    dbname = f"pm_bench_latency_{tag}"
    api_key = new_key()
    settings = settings_mod.load({**os.environ, **queues, "POSTGRES_DB": dbname})
    env = common.service_env(settings, **queues, POSITION_MANAGER_API_KEY=api_key,
                             POSITION_MANAGER_RATE_LIMIT_ENABLED="true",
                             POSITION_MANAGER_RATE_LIMIT_DEFAULT="1000000000",
                             POSITION_MANAGER_HEARTBEAT_INTERVAL=os.environ.get("POSITION_MANAGER_HEARTBEAT_INTERVAL", "1"))
    log_dir = common.OUT / f"latency-{tag}"
    watch_queue = f"bench-latency-{tag}.watch"
    spawn = mp.get_context("spawn")
    reports, stop_watch, stop_bg = spawn.Queue(), spawn.Event(), spawn.Event()
    sent = spawn.Value("q", 0)
    services: list[common.Service] = []
    children: list = []
    timer = None
    rng = random.Random(args.seed)
    problems: list[str] = []
    try:
        common.fresh_database(base, dbname)
        children = [spawn.Process(target=watch_rows, args=(env, reports, stop_watch), daemon=True),
                    spawn.Process(target=watch_events, args=(env, watch_queue, reports, stop_watch), daemon=True)]
        for child in children:
            child.start()
        ready = set()
        while len(ready) < 2:
            kind, name, _v, _t = reports.get(timeout=60)
            if kind == "ready":
                ready.add(name)
        services = [common.start_consumers(env, log_dir, role) for role in ("order", "position", "relay")]
        api, url = common.start_api(env, log_dir, name="latency_gunicorn")
        services.append(api)
        timer = Timer(settings, url, api_key, reports, args.timeout)

        def consumed(name: str) -> bool:
            ch = timer.mq.channel()
            try:
                count = ch.queue_declare(name, passive=True).method.consumer_count
                ch.close()
                return count > 0
            except pika.exceptions.ChannelClosedByBroker:
                return False          # not declared yet (the failed declaration closed the channel)
        for name in (settings.order_queue, settings.position_queue):
            wait_until(lambda name=name: consumed(name), 60, f"a consumer on {name}", services)
        print("pipeline up; warming up", flush=True)

        # warm-up (not measured): the price symbol needs a position; every path once
        timer.ch.basic_publish("", settings.order_queue, timer.inputs.execution(ASSETS["price"]), PERSISTENT)
        timer.published["execution"] += 1
        timer.settle(ASSETS["price"], 1.0)
        for kind in KINDS:
            if timer.probe(kind) is None:
                raise RuntimeError(f"warm-up {kind} not seen: {timer.missed}")
        timer.missed.clear()

        print(f"idle: {args.samples} inputs of each kind, one at a time", flush=True)
        idle = timer.series(args.samples, args.spacing, rng)

        db = appdb.connect(settings, autocommit=True)
        flow = Flow(run, args.seed)
        cap = capacity(settings, db, flow, args.burst, services)
        print(f"capacity: {cap['rate']:,.0f} executions/s applied and relayed "
              f"({cap['applied_rate']:,.0f}/s applied) over a burst of {args.burst:,}", flush=True)

        rate = cap["rate"] * args.load_fraction
        running = spawn.Event()
        bg = spawn.Process(target=background, args=(env, settings.order_queue, rate, args.burst, args.seed + 1, run,
                                                    sent, running, stop_bg), daemon=True)
        bg.start()
        children.append(bg)
        if not running.wait(60):
            raise RuntimeError("the background publisher did not start")
        print(f"load: background {rate:,.0f} executions/s; sampling after {args.warmup:g}s", flush=True)
        end = time.monotonic() + args.warmup
        while time.monotonic() < end:
            timer.pump(end - time.monotonic())
        depth_ch = timer.mq.channel()
        depths: list[int] = []
        cpu = CpuShare(db, services, {"row watcher": children[0], "event watcher": children[1], "background": bg})
        cpu.start()
        counters_before = role_counters(db)
        bg_t0, bg_n0 = time.monotonic(), sent.value
        load = timer.series(args.samples, args.spacing, rng,
                            during=lambda: depths.append(queue_depth(depth_ch, settings.order_queue)))
        bg_rate = (sent.value - bg_n0) / (time.monotonic() - bg_t0)
        cores = cpu.stop()
        batches = batch_figures(counters_before, role_counters(db))
        stop_bg.set()
        bg.join(30)
        total = args.burst + sent.value
        print(f"background ran at {bg_rate:,.0f}/s (target {rate:,.0f}); order queue depth max {max(depths or [0])}",
              flush=True)

        expected = total + timer.published["execution"]
        drain_t0 = time.monotonic()
        wait_until(lambda: counts(db) == (expected, 0), 300, "the backlog to drain", services)
        drained = time.monotonic() - drain_t0
        dead = db.execute(q("dead_letter_count")).fetchone()[0]
        ledger = counts(db)[0]
        db.close()
        if ledger != expected:
            problems.append(f"ledger holds {ledger} executions, {expected} published")
        if dead:
            problems.append(f"{dead} dead letters")
        problems += timer.missed
        stop_watch.set()
        extra: dict = {}
        deadline = time.monotonic() + 10
        while len(extra) < 2 and time.monotonic() < deadline:
            try:
                kind, _name, value, _t = reports.get(timeout=0.5)
            except queue_mod.Empty:
                continue
            if kind in ("reads", "events_seen"):
                extra[kind] = value
    finally:
        if timer is not None:
            timer.close()
        stop_watch.set()
        stop_bg.set()
        common.stop_all(services)
        for child in children:
            child.join(10)
            if child.is_alive():
                child.terminate()
        try:
            common.delete_queues(settings, [v for k, v in queues.items() if k.endswith("_QUEUE")])
        except Exception as exc:  # noqa: BLE001 - reported, the database is still dropped
            print(f"(could not delete the benchmark queues: {exc})", file=sys.stderr)
        common.drop_database(base, dbname)

    phases = {"idle": idle, "load": load}
    summary = {phase: {kind: {end: stats(phases[phase][kind][end]) for end in ENDS}
                       for kind in KINDS} for phase in PHASES}
    figures = []
    for phase in PHASES:
        for kind in KINDS:
            for end in ENDS:
                s = summary[phase][kind][end]
                if phase == "idle":
                    ref = reference("the target for p99 at idle (a requirement, not a measurement)", TARGET_MS[phase], "ms")
                    label = f"idle: {KIND_LABEL[kind]} -> {END_LABEL[end]}, p99"
                else:
                    idle_p99 = summary["idle"][kind][end]["p99"]
                    ref = reference("the same at idle, p99 (this run)", idle_p99, "ms")
                    label = (f"at {args.load_fraction:.0%} of capacity: {KIND_LABEL[kind]} -> {END_LABEL[end]}, p99 "
                             f"(target at most {TARGET_MS[phase]:.0f} ms)")
                figures.append(figure(f"{phase}_{kind}_{end}_p99", label, s["p99"], "ms", reference=ref,
                                      p50_ms=s["p50"], max_ms=s["max"]))
    figures.append(figure("capacity", f"capacity: a burst of {args.burst:,} executions applied and relayed",
                          cap["rate"], "executions/s"))
    figures.append(figure("background", "background load while sampling under load", bg_rate, "executions/s",
                          reference=reference("capacity, this run", cap["rate"], "executions/s")))
    targets = {phase: {f"{kind} {end}": summary[phase][kind][end]["p99"] <= TARGET_MS[phase]
                       for kind in KINDS for end in ENDS} for phase in PHASES}
    tuning = {k: os.environ[k] for k in TUNING if k in os.environ}
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in tuning.items()),
                        common.explicit_command("latency", ap, args)])
    path = common.write_result(
        "latency", command=command, passed=not problems, path=args.json,
        params=vars(args) | {"consumer_batch_size": settings.consumer_batch_size,
                             "consumer_prefetch": settings.consumer_prefetch,
                             "portfolio_event_interval": float(settings.portfolio_event_interval)},
        figures=figures,
        detail={"summary": summary, "targets_ms": TARGET_MS, "targets_met": targets,
                "capacity": cap, "background_target_rate": rate, "background_rate": bg_rate,
                "order_queue_depth_while_sampling": stats([float(d) for d in depths]),
                "drain_seconds_after_load": round(drained, 2),
                "cores_while_sampling_under_load": cores,
                "batches_while_sampling_under_load": batches,
                "listen_query_ms": extra.get("reads"), "events_seen_by_watcher": extra.get("events_seen"),
                "http_ms": {phase: stats(phases[phase]["price"]["http"]) for phase in PHASES},
                "http_samples_ms": {phase: phases[phase]["price"]["http"] for phase in PHASES},
                "samples_ms": {phase: {kind: {end: phases[phase][kind][end] for end in ENDS} for kind in KINDS}
                               for phase in PHASES},
                "problems": problems[:20]})
    print()
    print(f"{'':34} {'p50':>8} {'p99':>8} {'max':>8}  ms   (p99 target: idle 50, load 250)")
    for phase in PHASES:
        for kind in KINDS:
            for end in ENDS:
                s = summary[phase][kind][end]
                ok = "ok" if s["p99"] <= TARGET_MS[phase] else "MISSED"
                print(f"{phase:5} {kind:10} {end:6} (n={s['n']:4})  {s['p50']:8.1f} {s['p99']:8.1f} {s['max']:8.1f}  {ok}")
    print(f"capacity {cap['rate']:,.0f} executions/s; background {bg_rate:,.0f}/s "
          f"({bg_rate / cap['rate']:.0%}); drained {drained:.1f}s after the load")
    print("batches while sampling under load: " + ", ".join(f"{k} {v}" for k, v in batches.items()))
    print("cores used while sampling under load: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))
    if problems:
        print(f"\nFAILED ({len(problems)}):")
        for p in problems[:20]:
            print("  " + p)
    else:
        print(f"\nverified: {expected:,} executions in the ledger, no dead letters, every input seen at both ends")
    print(f"(written to {path})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
