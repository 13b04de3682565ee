"""The outbox relay: publishes the rows of pm.outbox to the events exchange.

Every event goes to the durable topic exchange POSITION_MANAGER_EVENTS_EXCHANGE with its event
type as routing key; our three queues are bound to it (app/broker.py declare_events), and any
other subscriber binds its own queue and gets every event.

One loop: in a transaction, claim the oldest unpublished rows (pm.outbox_claim, FOR UPDATE SKIP
LOCKED), publish them (persistent, application/json, message_id = event id, header trace_id,
mandatory: an event that no queue is bound for is an error) and wait until the broker confirmed
every one, mark them published, commit. A crash or a lost connection anywhere before the commit
leaves the rows unpublished: they are published again (a duplicate that consumers recognise by
message_id), never lost.

It sleeps on LISTEN pm_outbox (the outbox's insert trigger notifies at commit) with a slow
safety poll, never a hot poll. A wake-up takes every notification queued so far (one claim answers
them all: a notification arrives after its commit, so the claim sees those rows) and claims again
only after a full batch: a row committed after a claim's snapshot has a notification of its own
still to come. After publishing position changes it asks pm.enqueue_portfolio_event to add one
coalesced portfolio_updated event (at most one per POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL
seconds), retrying until that interval has passed; not sooner than an interval after the one it
added itself (the database would refuse it anyway), so that a busy relay does not pay a
transaction per wake-up for nothing.

Figures (app/figures.py): events published by type and the time of each batch, written with the
relay's heartbeat to pm.heartbeats every POSITION_MANAGER_HEARTBEAT_INTERVAL seconds.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import pika
import psycopg

from app import broker, sqlstates
from app import db as appdb
from app.figures import Figures, Heartbeat
from app.settings import Settings

log = logging.getLogger("position_manager.relay")

CLAIM_BATCH = 500            # rows per transaction
SAFETY_POLL_SECONDS = 5.0    # publish even if a notification was missed
SLOW_BATCH_SECONDS = 0.1     # a batch that took longer is logged with where its time went
KILL_AFTER_PUBLISH_ENV = "PM_TEST_RELAY_KILL_AFTER_PUBLISH"  # tests only: SIGKILL self before marking


class OutboxRelay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queues = broker.event_queues(settings)
        self.stopping = False
        self.listen_conn: psycopg.Connection | None = None
        self.db: psycopg.Connection | None = None
        self.mq: pika.BlockingConnection | None = None
        self.publisher: broker.ConfirmingPublisher | None = None
        self.portfolio_pending_since: float | None = None
        self.portfolio_added_at: float | None = None    # when this relay last added one (monotonic)
        self.kill_after_publish = os.environ.get(KILL_AFTER_PUBLISH_ENV) == "1"
        self.published_total = 0
        self.figures = Figures()
        self.heartbeat = Heartbeat(settings, "relay", self.figures)

    def stop(self, *_args) -> None:
        self.stopping = True

    # ---- connections -----------------------------------------------------------------------

    def _connect(self) -> None:
        if self.listen_conn is None or self.listen_conn.closed or self.listen_conn.broken:
            self.listen_conn = appdb.connect(self.settings, autocommit=True)
            self.listen_conn.execute(appdb.q("pipeline_listen_outbox"))
        if self.db is None or self.db.closed or self.db.broken:
            self.db = appdb.connect(self.settings, autocommit=True)
        if self.mq is None or not self.mq.is_open:
            self.mq = broker.connect(self.settings, "relay")
            channel = broker.declare_events(self.mq, self.mq.channel(), self.settings)
            self.publisher = broker.ConfirmingPublisher(self.mq, channel)
            log.info("relay connected", extra={"exchange": self.settings.events_exchange,
                                               "queues": list(self.queues.values())})

    def _drop(self, broker: bool, database: bool) -> None:
        if database:
            for conn in (self.listen_conn, self.db):
                if conn is not None:
                    conn.close()
            self.listen_conn = self.db = None
        if broker and self.mq is not None:
            try:
                if self.mq.is_open:
                    self.mq.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self.mq = self.publisher = None

    # ---- main loop -------------------------------------------------------------------------

    def run(self) -> None:
        backoff = broker.Backoff()
        while not self.stopping:
            try:
                self._connect()
                self._drain()
                backoff.reset()
                self._beat()
                self._wait()
            except broker.BROKER_ERRORS as exc:
                self._drop(broker=True, database=False)
                self._pause(backoff, "broker connection lost or publish not confirmed", exc)
            except psycopg.Error as exc:
                if not sqlstates.classify(exc).retry_batch:
                    raise
                self._drop(broker=False, database=True)
                self._pause(backoff, "database unreachable", exc)
        self.heartbeat.beat(self.db)   # the last figures
        self._drop(broker=True, database=True)
        log.info("relay stopped", extra={"published": self.published_total})

    def _pause(self, backoff: broker.Backoff, what: str, exc: BaseException) -> None:
        delay = backoff.next_delay()
        log.warning(f"{what}, retrying", extra={"error": str(exc).strip() or repr(exc),
                                                "retry_in_seconds": round(delay, 2)})
        deadline = time.monotonic() + delay
        while not self.stopping and time.monotonic() < deadline:
            self._beat()
            time.sleep(0.1)

    def _beat(self) -> None:
        if self.heartbeat.due():
            self.heartbeat.beat(self.db)

    def _drain(self) -> None:
        """Publish until nothing is pending; then maybe enqueue (and publish) portfolio_updated.
        A batch short of CLAIM_BATCH took every row committed before its claim: rows committed
        since then notify, and _wait returns at once for them."""
        while not self.stopping:
            published = self._publish_batch()
            self._beat()
            if published >= CLAIM_BATCH:
                continue
            if self._maybe_enqueue_portfolio():
                continue
            return

    def _publish_batch(self) -> int:
        started = time.monotonic()
        with appdb.write_transaction(self.db):
            rows = self.db.execute(appdb.q("pipeline_outbox_claim"), {"limit": CLAIM_BATCH}).fetchall()
            if not rows:
                return 0
            claimed = time.monotonic()
            messages = []
            for _id, event_id, event_type, trace_id, payload in rows:
                headers = {"trace_id": trace_id} if trace_id else {}
                properties = pika.BasicProperties(
                    content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=str(event_id), headers=headers, type=event_type)
                messages.append((event_type, payload.encode("utf-8"), properties))
            self.publisher.publish_all(messages, exchange=self.settings.events_exchange)
            confirmed = time.monotonic()
            if self.kill_after_publish:
                os.kill(os.getpid(), signal.SIGKILL)  # tests only: published, not yet marked
            self.db.execute(appdb.q("pipeline_outbox_mark_published"), {"ids": [r[0] for r in rows]})
        self.published_total += len(rows)
        done = time.monotonic()
        self.figures.observe("publish_seconds", done - started)
        if done - started >= SLOW_BATCH_SECONDS:
            log.info("slow relay batch", extra={
                "count": len(rows), "claim_ms": round((claimed - started) * 1000, 1),
                "publish_and_confirm_ms": round((confirmed - claimed) * 1000, 1),
                "mark_and_commit_ms": round((done - confirmed) * 1000, 1),
                "event_types": sorted({r[2] for r in rows})})
        for row in rows:
            self.figures.inc("published", row[2])
        if any(r[2] == "position_updated" for r in rows) and self.portfolio_pending_since is None:
            self.portfolio_pending_since = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            for _id, event_id, event_type, trace_id, _payload in rows:
                log.debug("event published", extra={"event_id": str(event_id), "event_type": event_type,
                                                    "trace_id": trace_id, "queue": self.queues[event_type]})
        log.info("events published", extra={"count": len(rows), "published_total": self.published_total})
        return len(rows)

    def _maybe_enqueue_portfolio(self) -> bool:
        """True when a portfolio_updated row was added (to be published now)."""
        if self.portfolio_pending_since is None:
            return False
        interval = float(self.settings.portfolio_event_interval)
        if self.portfolio_added_at is not None and time.monotonic() - self.portfolio_added_at < interval:
            return False   # this relay added one less than an interval ago: the database would say no
        with appdb.write_transaction(self.db):
            added = self.db.execute(appdb.q("pipeline_enqueue_portfolio_event"), {
                "interval": self.settings.portfolio_event_interval}).fetchone()[0]
        if added:
            self.portfolio_added_at = time.monotonic()
        if added or time.monotonic() - self.portfolio_pending_since > interval + 1.0:
            # added, or a whole interval passed: a false answer now means nothing changed since
            # the last portfolio event (another relay emitted it)
            self.portfolio_pending_since = None
        return bool(added)

    def _wait(self) -> None:
        """Sleep until notified, the safety poll, or the next portfolio check; stay responsive to stop."""
        timeout = SAFETY_POLL_SECONDS
        if self.portfolio_pending_since is not None:
            timeout = min(timeout, max(0.05, float(self.settings.portfolio_event_interval) / 4))
        deadline = time.monotonic() + timeout
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            notified = False
            for _notify in self.listen_conn.notifies(timeout=min(left, 1.0), stop_after=1):
                notified = True
            if notified:
                for _notify in self.listen_conn.notifies(timeout=0):   # those queued meanwhile: one claim
                    pass
            self.mq.process_data_events(time_limit=0)  # heartbeats
            self._beat()
            if notified:
                return


def run(settings: Settings) -> None:
    relay = OutboxRelay(settings)
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    relay.run()
