"""A blocking pika consumer that hands message bodies to pm.apply_order_event /
pm.apply_position_event.

Per batch (up to POSITION_MANAGER_CONSUMER_BATCH_SIZE messages, flushed early when the queue
goes quiet for a few milliseconds):

1. Bodies that are not UTF-8 are set aside for the dead-letter queue. The others are NOT parsed
   as JSON here: PostgreSQL parses them anyway.
2. They are applied in ONE transaction by ONE statement (`pipeline_apply_*_batch`: the bodies as
   one text[], pm.apply_batch over them; it writes each position once per batch, in (asset, mode)
   order), which returns plain columns per message. When it raises, that transaction is rolled
   back; bodies that are not JSON are then set aside for the dead-letter queue (the statement is
   tried once more without them), and when it still raises the batch is applied again message by
   message, each under a SAVEPOINT (at most 50 per transaction): invalid input (class
   invalid_input of app/sqlstates.py) is rolled back alone and dead-lettered, its neighbours commit.
   Savepoints only on this slow path: per message they cost ~30% throughput (measured, see README)
   and more than 64 subtransactions in one transaction overflow PostgreSQL's per-backend subxid
   cache, which slows down every other session's snapshots.
3. Commit; then dead letters are published (persistent, publisher confirms) and recorded with
   pm.record_dead_letter; then everything done is acknowledged with one `multiple` ack.

Pipelined: the database call runs on a worker thread while this thread receives the next
messages; when the next batch is ready as a batch commits, it is handed to the database at once,
and the committed batch is acknowledged, counted and logged while the database applies the next
(step 3 above, but never before its own commit; a batch with dead letters is finished first,
since recording them needs the database connection). When nothing else is ready, a committed
batch is finished at once: a lone message is not held back.

Nothing is acknowledged before its commit. What a database error leads to is decided by its class
in app/sqlstates.py: when the database is the problem (connection lost, deadlock, serialization,
lock not available, not migrated) the batch is rolled back and retried: deadlocks at once a few
times, everything else with backoff while the broker connection is kept alive; the messages stay
unacknowledged meanwhile. A message failing for another reason stays unacknowledged in this
process and is retried with backoff; after
POSITION_MANAGER_MAX_DELIVERY_ATTEMPTS attempts it is dead-lettered. The attempt counter is kept
in memory, keyed by message_id (or the body's SHA-1), so it survives broker redeliveries within
one process but not a restart of the process (see README).

The position consumer also keeps ws-gateway forwarding Bybit's position topic when WS_GATEWAY_HOST
is set (consumers/ws_gateway.py, a thread of its own that never touches the broker connection).

Figures (app/figures.py): messages by outcome, per-batch and per-message times, the lag of the
last batch, the oldest message held and the queue's depth; written with the role's heartbeat to
pm.heartbeats every POSITION_MANAGER_HEARTBEAT_INTERVAL seconds, outside the batches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import pika
import psycopg

from app import broker, logs, sqlstates
from app import db as appdb
from app.figures import Figures, Heartbeat, event_time
from app.settings import Settings
from consumers import ws_gateway

log = logging.getLogger("position_manager.consumer")

# kind -> (settings attribute of the queue, one-message query); a batch of either is pipeline_apply_batch
KINDS = {
    "order": ("order_queue", "apply_order_event"),
    "position": ("position_queue", "apply_position_event"),
}

DEADLOCK_RETRIES = 3          # a deadlocked batch is retried at once this many times, then with backoff
IDLE_FLUSH_SECONDS = 0.005    # flush a partial batch when no message arrived for this long
MAX_BATCH_AGE_SECONDS = 0.05  # ... or when its oldest message waited this long
SLOW_PATH_CHUNK = 50          # messages (savepoints) per transaction when applying one by one
KILL_AFTER_COMMITS_ENV = "PM_TEST_KILL_AFTER_COMMITS"  # tests only: SIGKILL self after the Nth commit
# the fields of the line logged per applied message ("message processed")
LOG_FIELDS = ("queue", "event_id", "trace_id", "status", "reason", "asset", "position_version", "delivery_tag",
              "redelivered")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@dataclass(slots=True)
class Delivery:
    """One message received from the broker and what became of it."""
    tag: int
    properties: pika.BasicProperties
    body: bytes
    redelivered: bool
    received_at: float
    text: str | None = None
    dead: tuple[str, str] | None = None       # (reason, error code): goes to the dead-letter queue
    result: dict | None = None                # {status, reason, asset, version[, event_id, trace_id]}
    failure: BaseException | None = None      # unknown error in this attempt
    extra: dict = field(default_factory=dict)

    @property
    def event_time(self) -> float | None:
        """When its event happened (epoch seconds), if the message says (computed once, when asked)."""
        if "event_time" not in self.extra:
            self.extra["event_time"] = event_time(self.doc, self.properties.timestamp)
        return self.extra["event_time"]

    @property
    def age(self) -> float:
        """Seconds since its event happened, else since it arrived here."""
        t = self.event_time
        return time.time() - t if t is not None else time.monotonic() - self.received_at

    def decode(self) -> None:
        """UTF-8 only, at arrival. The JSON is parsed by PostgreSQL on the batch path, and here only
        when something needs it (`doc`, `check_json`)."""
        try:
            self.text = self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.dead = (f"invalid UTF-8: {exc}", "invalid_utf8")

    def _parse(self) -> None:
        if "doc" in self.extra:
            return
        self.extra["doc"], self.extra["json_error"] = None, None
        if self.text is None:
            return
        try:
            # NaN/Infinity are not JSON (Python accepts them, PostgreSQL does not)
            self.extra["doc"] = json.loads(self.text, parse_constant=_reject_constant)
        except ValueError as exc:
            self.extra["json_error"] = f"invalid JSON: {exc}"

    @property
    def doc(self) -> Any:
        """The body as JSON (parsed once, when first asked), None when it is not JSON."""
        self._parse()
        return self.extra["doc"]

    def check_json(self) -> bool:
        """False, and set aside for the dead-letter queue, when the body is not JSON."""
        self._parse()
        if self.extra["json_error"] is not None:
            self.dead = (self.extra["json_error"], "invalid_json")
        return self.dead is None

    @property
    def key(self) -> str:
        """Identity for counting attempts across redeliveries."""
        return self.properties.message_id or hashlib.sha1(self.body).hexdigest()

    @property
    def trace_id(self) -> str | None:
        if self.result is not None and "trace_id" in self.result:   # read by the batch statement
            return self.result["trace_id"] or self._header_trace_id()
        if isinstance(self.doc, dict) and isinstance(self.doc.get("trace_id"), str):
            return self.doc["trace_id"]
        return self._header_trace_id()

    def _header_trace_id(self) -> str | None:
        headers = self.properties.headers or {}
        value = headers.get("trace_id")
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    @property
    def event_id(self) -> str | None:
        if self.result is not None and "event_id" in self.result:   # read by the batch statement
            return self.result["event_id"] or self.properties.message_id
        if isinstance(self.doc, dict):
            for name in ("event_id", "execution_id", "execId", "id"):
                if isinstance(self.doc.get(name), (str, int)):
                    return str(self.doc[name])
        return self.properties.message_id

    @property
    def lock_key(self) -> str:
        return lock_key(self.doc)


def lock_key(doc: Any) -> str:
    """The symbol a message is about, or "" when it cannot be told. Only an ordering hint:
    a batch is applied in (symbol, arrival) order so that concurrent batches (two consumers, or
    the order and the position consumer) lock position rows in the same order and do not
    deadlock. Messages of one symbol keep their relative order."""
    if isinstance(doc, list):
        doc = doc[0] if doc else None
    if not isinstance(doc, dict):
        return ""
    for container in (doc, doc.get("order"), doc.get("payload"), doc.get("data")):
        if isinstance(container, list):
            container = container[0] if container else None
        if isinstance(container, dict):
            for name in ("asset", "symbol"):
                value = container.get(name)
                if isinstance(value, str):
                    return value.strip().upper()
    return ""


def _summary(result: Any) -> dict:
    """What the log line shows of a one-message result (the slow path's pm.apply_*_event):
    {status, reason, asset, version}, the last position of a multi-record message."""
    if not isinstance(result, dict):
        return {"status": None, "reason": None, "asset": None, "version": None}
    position = result.get("position")
    if position is None and isinstance(result.get("results"), list):
        positions = [r.get("position") for r in result["results"] if isinstance(r, dict) and r.get("position")]
        position = positions[-1] if positions else None
    return {"status": result.get("status"), "reason": result.get("reason"),
            "asset": position.get("asset") if position else None,
            "version": position.get("version") if position else None}


def _json_safe(value: Any) -> Any:
    """AMQP header values (bytes, Decimal, datetime, nested tables) as JSON values."""
    return json.loads(json.dumps(value, default=lambda v: v.decode("utf-8", "replace")
                                 if isinstance(v, bytes) else str(v)))


class QueueConsumer:
    def __init__(self, settings: Settings, kind: str) -> None:
        queue_attr, self.one_query = KINDS[kind]
        self.settings = settings
        self.kind = kind
        self.queue: str = getattr(settings, queue_attr)
        self.stopping = False
        self.db: psycopg.Connection | None = None
        self.mq: pika.BlockingConnection | None = None
        self.channel = None
        self.publisher: broker.ConfirmingPublisher | None = None
        self.pending: list[Delivery] = []
        self.in_flight: list[Delivery] = []     # the batch the database is applying
        self.unfinished: tuple | None = None    # a committed batch not yet acknowledged (pipelining)
        self.retry: list[tuple[float, Delivery]] = []
        self.attempts: dict[str, int] = {}
        self.last_arrival = 0.0
        self.commits = 0
        self.kill_after_commits = int(os.environ.get(KILL_AFTER_COMMITS_ENV, "0") or 0)
        self.db_backoff = broker.Backoff()
        self.probe = None   # a channel of its own for the queue's depth (a passive declare)
        self.figures = Figures()
        self.heartbeat = Heartbeat(settings, kind, self.figures)
        # the database call of a batch runs on this thread while the main thread keeps receiving
        # and decoding the next messages (pika is used by the main thread only)
        self.worker = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
        # the position consumer keeps ws-gateway forwarding the position topic (its own thread)
        self.subscription = (ws_gateway.Subscription(settings)
                             if kind == "position" and settings.ws_gateway_url else None)

    # ---- lifecycle -------------------------------------------------------------------------

    def stop(self, *_args) -> None:
        """SIGTERM/SIGINT: finish the batch in hand (commit, ack), then close."""
        self.stopping = True

    def run(self) -> None:
        if self.subscription is not None:
            self.subscription.start()
        mq_backoff = broker.Backoff()
        while not self.stopping:
            try:
                self._ensure_db()
                if self.stopping:
                    break
                self._connect_mq()
                mq_backoff.reset()
                self._consume()
            except broker.BROKER_ERRORS as exc:
                self._drop_mq()
                delay = mq_backoff.next_delay()
                log.warning("broker connection lost, reconnecting", extra={
                    "queue": self.queue, "error": repr(exc), "retry_in_seconds": round(delay, 2)})
                self._sleep(delay)
        self._close()

    def _sleep(self, seconds: float) -> None:
        """Sleep, servicing the broker connection (heartbeats) when there is one; wake on stop."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            self._beat()
            if self.mq is not None and self.mq.is_open:
                try:
                    self.mq.sleep(min(left, 0.25))
                    continue
                except broker.BROKER_ERRORS:
                    pass  # noticed again by the caller's next broker operation
            time.sleep(min(left, 0.25))

    def _ensure_db(self) -> None:
        """A working database connection, waiting with backoff (and without consuming) until then."""
        while self.db is None or self.db.closed or self.db.broken:
            try:
                self.db = appdb.connect(self.settings, autocommit=True)
                if not self.db.execute(appdb.q("pipeline_schema_ready")).fetchone()[0]:
                    self.db.close()
                    raise psycopg.errors.UndefinedFunction(
                        "the database lacks the pm functions the consumer calls: run bin/migrate")
                self.db_backoff.reset()
                log.info("database connected", extra={"queue": self.queue})
                self._beat(force=True)
            except psycopg.Error as exc:
                self._finish()   # a committed batch waiting for its ack does not wait for the database
                delay = self.db_backoff.next_delay()
                log.warning("database unreachable or not migrated, retrying", extra={
                    "queue": self.queue, "error": str(exc).strip(), "retry_in_seconds": round(delay, 2)})
                self._sleep(delay)
                if self.stopping:
                    return

    def _connect_mq(self) -> None:
        self.mq = broker.connect(self.settings, f"consumer:{self.kind}")
        self.channel = broker.declare_queue(self.mq, self.mq.channel(), self.settings, self.queue)
        publish_channel = self.mq.channel()
        publish_channel = broker.declare_queue(self.mq, publish_channel, self.settings,
                                               self.settings.dead_letter_queue)
        self.publisher = broker.ConfirmingPublisher(self.mq, publish_channel)
        self.probe = self.mq.channel()
        self.channel.basic_qos(prefetch_count=self.settings.consumer_prefetch)
        self.channel.basic_consume(self.queue, self._on_message, auto_ack=False)
        log.info("consuming", extra={"queue": self.queue, "prefetch": self.settings.consumer_prefetch,
                                     "batch_size": self.settings.consumer_batch_size})

    def _drop_mq(self) -> None:
        # delivery tags die with the channel: whatever was unacknowledged is redelivered (a
        # committed batch too: the redelivery has no second effect)
        self.pending.clear()
        self.retry.clear()
        self.in_flight = []
        self.unfinished = None
        if self.mq is not None:
            try:
                if self.mq.is_open:
                    self.mq.close()
            except Exception:  # noqa: BLE001 - already broken; nothing more to do
                pass
        self.mq = self.channel = self.publisher = self.probe = None

    def _close(self) -> None:
        if self.mq is not None and self.mq.is_open:
            try:
                self.mq.close()   # unacknowledged messages (held retries, prefetch) go back to the queue
            except broker.BROKER_ERRORS:
                pass
        self.worker.shutdown(wait=True)
        if self.subscription is not None:
            self.subscription.stop()
        self._beat(force=True)   # the last figures
        if self.db is not None:
            self.db.close()
        log.info("stopped", extra={"queue": self.queue})

    # ---- consuming ---------------------------------------------------------------------------

    def _on_message(self, _channel, method, properties, body: bytes) -> None:
        delivery = Delivery(method.delivery_tag, properties, body, method.redelivered, time.monotonic())
        delivery.decode()
        self.pending.append(delivery)
        self.last_arrival = delivery.received_at

    def _consume(self) -> None:
        batch_size = self.settings.consumer_batch_size
        while True:
            wait = IDLE_FLUSH_SECONDS if self.pending else 0.25
            if self.retry:
                wait = min(wait, max(0.0, min(due for due, _ in self.retry) - time.monotonic()))
            if not self.stopping:
                self.mq.process_data_events(time_limit=wait)
            self._promote_due_retries()
            while self.pending and (self.stopping or len(self.pending) >= batch_size or self._batch_is_ripe()):
                batch = self.pending[:batch_size]
                del self.pending[:batch_size]
                if not self._flush(batch):
                    return  # stopping while the database is down: leave them unacknowledged
                self._beat()   # between two batches (the database is idle): under a backlog too
            self._finish()   # nothing more ready: acknowledge what is committed now
            self._beat()
            if self.stopping:
                return

    def _batch_is_ripe(self) -> bool:
        now = time.monotonic()
        return (now - self.last_arrival >= IDLE_FLUSH_SECONDS
                or now - self.pending[0].received_at >= MAX_BATCH_AGE_SECONDS)

    def _promote_due_retries(self) -> None:
        if not self.retry:
            return
        now = time.monotonic()
        due = [d for t, d in self.retry if t <= now]
        if due:
            self.retry = [(t, d) for t, d in self.retry if t > now]
            self.pending[:0] = due
            self.last_arrival = 0.0  # flush them now

    # ---- one batch -------------------------------------------------------------------------

    def _flush(self, batch: list[Delivery]) -> bool:
        """Apply and commit one batch; it is finished (dead-lettered, acknowledged, counted, logged)
        by _finish: at once when it has dead letters, else while the database applies the next
        batch, or when no next batch is ready. False when stopping before a commit."""
        for d in batch:
            d.result, d.failure = None, None
        todo = [d for d in batch if d.dead is None]
        if self.kind == "position":
            # pm.apply_batch orders the executions of order messages itself (by asset and mode)
            todo.sort(key=lambda d: d.lock_key)
        self.in_flight = batch
        started = time.monotonic()
        try:
            committed = self._commit_with_retries(todo)
        finally:
            self.in_flight = []
        seconds = time.monotonic() - started
        self._finish()   # the previous batch, when no database call took it
        if not committed:
            return False
        self._count_failures(batch)
        self.unfinished = (batch, todo, seconds)
        if any(d.dead is not None for d in batch):
            self._finish()   # recording dead letters needs the database connection: not deferred
        return True

    def _finish(self) -> None:
        """Dead-letter, acknowledge, count and log the committed batch, if one waits."""
        if self.unfinished is None:
            return
        batch, todo, seconds = self.unfinished
        self.unfinished = None
        if todo:
            self.figures.observe("batch_seconds", seconds)
            oldest = min(todo, key=lambda d: d.received_at)
            if oldest.event_time is not None:
                self.figures.gauge("lag_seconds", max(0.0, oldest.age))
        dead = [d for d in batch if d.dead is not None]
        if dead:
            self._dead_letter(dead)
        done = [d for d in batch if d.failure is None or d.dead is not None]
        self._ack(done)
        self._count(done)
        self._log(batch)

    def _count(self, done: list[Delivery]) -> None:
        """Outcome and time from arrival to acknowledgement of every finished message."""
        now = time.monotonic()
        outcomes: dict[str, int] = {}
        for d in done:
            if d.dead is not None:
                outcome = "failed" if d.extra.get("exhausted") else "invalid"
            else:
                outcome = str((d.result or {}).get("status") or "unknown")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            self.figures.observe("message_seconds", now - d.received_at)
        for outcome, count in outcomes.items():
            self.figures.inc("messages", outcome, count)

    def _beat(self, force: bool = False) -> None:
        """Every heartbeat interval (outside a batch): the queue's depth and the oldest message held
        into the figures, then the heartbeat. Neither may stop consuming."""
        if not (force or self.heartbeat.due()):
            return
        depth = None
        if self.probe is not None and self.mq is not None and self.mq.is_open:
            try:
                depth = self.probe.queue_declare(self.queue, passive=True).method.message_count
            except broker.BROKER_ERRORS:
                self.probe = None   # opened again with the next broker connection
        self.figures.gauge("queue_depth", depth)
        held = self.pending + self.in_flight + [d for _, d in self.retry]
        self.figures.gauge("oldest_unprocessed_seconds", max((d.age for d in held), default=0.0))
        self.heartbeat.beat(self.db)

    def _commit_with_retries(self, todo: list[Delivery]) -> bool:
        deadlocks = 0
        while True:
            try:
                self._ensure_db()
                if self.db is None or self.db.closed:
                    return False
                self._in_worker(self._apply, todo)
                self.db_backoff.reset()
                break
            except psycopg.Error as exc:
                error = sqlstates.classify(exc)
                if not error.retry_batch:
                    raise
                for d in todo:
                    d.result, d.failure, d.dead = None, None, None
                if error.consumer == sqlstates.RETRY_NOW and deadlocks < DEADLOCK_RETRIES:
                    deadlocks += 1
                    log.info("deadlock or serialization failure, retrying the batch", extra={
                        "queue": self.queue, "sqlstate": exc.sqlstate, "attempt": deadlocks})
                    continue
                if self.stopping:
                    log.warning("stopping while the database fails: batch left unacknowledged",
                                extra={"queue": self.queue, "messages": len(todo)})
                    return False
                delay = self.db_backoff.next_delay()
                log.warning("database error, batch rolled back and retried later (not acknowledged)", extra={
                    "queue": self.queue, "sqlstate": getattr(exc, "sqlstate", None), "error": str(exc).strip(),
                    "messages": len(todo), "retry_in_seconds": round(delay, 2)})
                if self.db is not None and (self.db.broken or self.db.closed):
                    self.db.close()
                    self.db = None
                self._sleep(delay)
                if self.stopping and (self.db is None or self.db.closed):
                    return False
        self.commits += 1
        if self.kill_after_commits and self.commits >= self.kill_after_commits:
            # tests only: die between commit and ack, to prove a redelivery has no second effect
            os.kill(os.getpid(), signal.SIGKILL)
        return True

    def _in_worker(self, fn, *args):
        """fn(*args) on the database thread; meanwhile the broker connection is serviced here
        (deliveries are received and decoded, heartbeats answered). The worker wakes this loop
        when it is done (add_callback_threadsafe), so there is no polling delay."""
        connection = self.mq

        def call():
            try:
                return fn(*args)
            finally:
                if connection is not None:
                    try:
                        connection.add_callback_threadsafe(lambda: None)
                    except Exception:  # noqa: BLE001 - the connection is gone; the loop below times out
                        pass

        future = self.worker.submit(call)
        try:
            self._finish()   # the previous batch (committed, without dead letters) meanwhile
            while not future.done():
                if connection is not None and connection.is_open:
                    connection.process_data_events(time_limit=0.05)
                else:
                    futures.wait([future], timeout=0.05)
        except BaseException:
            futures.wait([future])   # never leave the database connection busy behind our back
            raise
        return future.result()

    def _try_batch(self, todo: list[Delivery]) -> psycopg.Error | None:
        """None when the batch was applied; the error when one of its messages is invalid (an error
        that means "retry the whole batch later" is raised)."""
        try:
            self._apply_batch(todo)
            return None
        except psycopg.Error as exc:
            if sqlstates.classify(exc).retry_batch:
                raise
            return exc

    def _apply(self, todo: list[Delivery]) -> None:
        if not todo:
            return
        failed = self._try_batch(todo)
        if failed is None:
            return
        # the bodies that are not JSON go to the dead-letter queue; the others once more at once
        # (a list, not any(): check_json marks every body that is not JSON)
        not_json = [d for d in todo if not d.check_json()]
        if not_json:
            todo = [d for d in todo if d.dead is None]
            failed = self._try_batch(todo)
            if failed is None:
                return
        log.info("a message of the batch failed, applying one by one", extra={
            "queue": self.queue, "sqlstate": failed.sqlstate, "messages": len(todo)})
        # at most SLOW_PATH_CHUNK savepoints per transaction (PostgreSQL caches 64 subtransaction
        # ids per backend); a retry after a transient error re-applies committed chunks as duplicates
        for start in range(0, len(todo), SLOW_PATH_CHUNK):
            with appdb.write_transaction(self.db):
                for d in todo[start:start + SLOW_PATH_CHUNK]:
                    try:
                        with self.db.transaction():
                            d.result = _summary(
                                self.db.execute(appdb.q(self.one_query), {"event": d.text}).fetchone()[0])
                    except psycopg.Error as exc:
                        error = sqlstates.classify(exc)
                        if error.retry_batch:
                            raise
                        if error.consumer == sqlstates.DEAD_LETTER:
                            d.dead = (exc.diag.message_primary or str(exc), exc.sqlstate)
                        else:
                            d.failure = exc

    def _apply_batch(self, todo: list[Delivery]) -> None:
        """The batch statement in one transaction; each message's result from its row."""
        with appdb.write_transaction(self.db):
            rows = self.db.execute(appdb.q("pipeline_apply_batch"),
                                   {"kind": self.kind, "bodies": [d.text for d in todo]}).fetchall()
        for ordinal, status, reason, asset, version, event_id, trace_id in rows:
            todo[ordinal - 1].result = {"status": status, "reason": reason, "asset": asset, "version": version,
                                        "event_id": event_id, "trace_id": trace_id}

    def _count_failures(self, batch: list[Delivery]) -> None:
        """Unknown failures: retry later with backoff, dead-letter after max_delivery_attempts."""
        now = time.monotonic()
        for d in batch:
            if d.failure is None:
                if self.attempts:
                    self.attempts.pop(d.key, None)
                continue
            attempts = self.attempts.get(d.key, 0) + 1
            self.attempts[d.key] = attempts
            error = f"{type(d.failure).__name__}: {str(d.failure).strip()}"
            code = getattr(d.failure, "sqlstate", None) or "unknown"
            if attempts >= self.settings.max_delivery_attempts:
                d.dead = (f"failed {attempts} times, last error {error}", code)
                d.extra["exhausted"] = True
                self.attempts.pop(d.key, None)
                continue
            delay = min(30.0, 0.5 * 2 ** (attempts - 1))
            log.warning("message failed for an unknown reason, will retry", extra={
                "queue": self.queue, "event_id": d.event_id, "trace_id": d.trace_id, "sqlstate": code,
                "error": error, "attempt": attempts, "retry_in_seconds": delay})
            self.retry.append((now + delay, d))

    def _dead_letter(self, dead: list[Delivery]) -> None:
        """Publish to the dead-letter queue (confirmed), record in PostgreSQL; the caller acks after."""
        messages = []
        for d in dead:
            reason, code = d.dead
            headers = dict(d.properties.headers or {})
            headers.update({"x-death-reason": reason[:1000], "x-source-queue": self.queue, "x-error-code": code,
                            "x-original-message-id": d.properties.message_id})
            properties = pika.BasicProperties(
                content_type=d.properties.content_type or "application/json",
                delivery_mode=pika.DeliveryMode.Persistent, message_id=d.properties.message_id,
                correlation_id=d.properties.correlation_id, timestamp=d.properties.timestamp, headers=headers)
            messages.append((self.settings.dead_letter_queue, d.body, properties))
        self.publisher.publish_all(messages)
        while True:
            try:
                self._ensure_db()
                with appdb.write_transaction(self.db):
                    for d in dead:
                        self.db.execute(appdb.q("pipeline_record_dead_letter"), {
                            "queue": self.queue, "reason": d.dead[0], "error_code": d.dead[1],
                            "message_id": d.properties.message_id,
                            "body": d.body.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"),
                            "headers": json.dumps(_json_safe(d.properties.headers or {}))})
                break
            except psycopg.Error as exc:
                if not sqlstates.classify(exc).retry_batch or self.stopping:
                    # the message is in the dead-letter queue already; losing the record is better
                    # than blocking the queue on it
                    log.error("could not record a dead letter", extra={"queue": self.queue, "error": str(exc)})
                    break
                self.db = None if (self.db and (self.db.broken or self.db.closed)) else self.db
                self._sleep(self.db_backoff.next_delay())
        for d in dead:
            log.warning("dead-lettered", extra={
                "queue": self.queue, "event_id": d.event_id, "trace_id": d.trace_id, "status": "dead_letter",
                "reason": d.dead[0], "error_code": d.dead[1], "delivery_tag": d.tag})

    def _ack(self, done: list[Delivery]) -> None:
        if not done:
            return
        top = max(d.tag for d in done)
        # a held message below `top` (pending, retrying, or in the batch the database is applying
        # now) must not be taken by a multiple ack
        held = {d.tag for d in self.pending} | {d.tag for d in self.in_flight} | {d.tag for _, d in self.retry}
        if not any(tag < top for tag in held):
            self.channel.basic_ack(delivery_tag=top, multiple=True)
        else:
            for d in done:  # a held (retrying) message lies below: a multiple ack would take it too
                self.channel.basic_ack(delivery_tag=d.tag)

    def _log(self, batch: list[Delivery]) -> None:
        """One line per applied message (dead letters were logged by _dead_letter), written at once."""
        queue = self.queue
        logs.info_rows(log, "message processed", LOG_FIELDS, [
            (queue, d.event_id, d.trace_id, d.result["status"], d.result["reason"], d.result["asset"],
             d.result["version"], d.tag, d.redelivered)
            for d in batch if d.result is not None])


def run(settings: Settings, kind: str) -> None:
    consumer = QueueConsumer(settings, kind)
    signal.signal(signal.SIGTERM, consumer.stop)
    signal.signal(signal.SIGINT, consumer.stop)
    consumer.run()
