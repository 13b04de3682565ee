"""GET /api/v1/stream: Server-Sent Events of every committed position change, for dashboards.

Fed by PostgreSQL LISTEN/NOTIFY: the outbox insert trigger notifies pm_outbox at commit (empty
payload); the stream then reads the new outbox rows by id (pm.stream_fetch, which never moves
past an id that a transaction still in flight may commit). Each event is

    id: <outbox id>
    event: position_created | position_updated | position_closed | price_update
    data: <one line of JSON: the published position_updated body, typed; or the coalesced prices>

A client that connects without Last-Event-ID first gets `initial_data` (the open positions; its id
is where the stream goes on). Price changes that follow each other become one price_update, held
back up to PRICE_COALESCE_SECONDS for more; ?asset=BTCUSDT,ETHUSDT keeps the stream to those
symbols. A client that reconnects with Last-Event-ID (EventSource does so by itself; or ?last_event_id=)
gets every event after that id first. Comment lines (": heartbeat") go out every
POSITION_MANAGER_STREAM_HEARTBEAT seconds, so proxies keep the connection and a vanished client
is noticed. A stream ends after POSITION_MANAGER_STREAM_MAX_SECONDS (EventSource reconnects and
resumes), and a worker serves at most (threads - 1) streams at once, so one thread of every
gunicorn gthread worker is always free for other requests; one more gets 503 + Retry-After.
One key (or token subject) holds at most POSITION_MANAGER_STREAM_MAX_PER_KEY streams at once over
every worker and instance (a slot is a session advisory lock of the stream's connection,
pm.stream_take_slot, so it is freed whenever that connection goes); one more gets 429, and other
keys still get theirs. Each stream holds its own database connection (LISTEN needs a session), not
one of the pool.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Iterator

import falcon
import psycopg

from app.api import params
from app.api.errors import ApiError, bad_parameter, database_unavailable
from app.db import connect, q
from app.settings import Settings

log = logging.getLogger("position_manager.api.stream")

FETCH_LIMIT = 500
# Price changes are sent at most this often per stream (one price_update for all of them).
PRICE_COALESCE_SECONDS = 0.5
# How long initial_data waits for writers that were in flight when the stream started.
START_GRACE_SECONDS = 2
# At most this many symbols in ?asset=.
MAX_ASSETS = 100
# While pm.stream_fetch holds at a gap (a writer in flight), poll this often instead of waiting.
HOLD_POLL_SECONDS = 0.05
# A gap is given up after this long (a session idle in a transaction must not stall the stream).
GAP_GRACE_SECONDS = 10
RECONNECT_MILLISECONDS = 1000


class _StreamSlot:
    """One stream's resources: its database connection and its place among the worker's streams.
    Released exactly once, by whichever comes first: the end of the body, the server closing the
    body (client gone), or the body being dropped unstarted (an error after on_get)."""

    def __init__(self, conn: psycopg.Connection, slots: threading.BoundedSemaphore):
        self.conn = conn
        self._slots = slots
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            self.conn.close()
        finally:
            self._slots.release()


class _StreamBody:
    """The WSGI iterable: gunicorn iterates it and calls close() when done or when the client left."""

    def __init__(self, events: Iterator[bytes], slot: _StreamSlot):
        self._events = events
        self._slot = slot

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        try:
            self._events.close()  # runs the generator's finally when it had started
        finally:
            self._slot.release()

    def __del__(self) -> None:
        self._slot.release()


class StreamResource:
    def __init__(self, settings: Settings, max_streams: int | None = None):
        self.settings = settings
        self.heartbeat = float(settings.stream_heartbeat)
        self.max_seconds = float(settings.stream_max_seconds)
        self.max_per_key = settings.stream_max_per_key
        self.max_streams = max(settings.api_threads - 1, 0) if max_streams is None else max_streams
        self._slots = threading.BoundedSemaphore(self.max_streams) if self.max_streams > 0 else None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.only(req, "last_event_id", "asset")
        last_id = self._last_event_id(req)
        assets = params.assets(req, maximum=MAX_ASSETS)
        if self._slots is None or not self._slots.acquire(blocking=False):
            raise ApiError(503, "too_many_streams",
                           f"this worker already serves {self.max_streams} live streams; retry later",
                           {"Retry-After": "5"})
        try:
            conn = connect(self.settings, autocommit=True)
        except psycopg.Error:
            self._slots.release()
            raise database_unavailable() from None
        slot = _StreamSlot(conn, self._slots)
        try:
            # the key's own cap, over every worker and instance: a slot is held by this connection
            (held,) = conn.execute(q("extras_stream_slot"), {"key_hash": req.context.caller.key_hash,
                                                             "cap": self.max_per_key}).fetchone()
            if held is None:
                raise ApiError(429, "too_many_streams",
                               f"this key already holds {self.max_per_key} live streams (the most one key may "
                               "hold at once); close one or retry later", {"Retry-After": "5"})
            conn.execute(q("extras_stream_listen"))  # before the first read: no commit falls between
            (head,) = conn.execute(q("extras_stream_head")).fetchone()
        except BaseException:
            slot.release()
            raise
        # no id: initial_data first, then on from where it was read; an id beyond the newest
        # (another database?): from the newest
        cursor = None if last_id is None else min(last_id, head)
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        resp.stream = _StreamBody(self._events(slot, cursor, assets, req.context.trace_id), slot)

    @staticmethod
    def _last_event_id(req: falcon.Request) -> int | None:
        header = req.get_header("Last-Event-ID")
        query = params.integer(req, "last_event_id", default=None, minimum=0, maximum=2**63 - 1)
        if header is None:
            return query
        if not header.strip().isdigit() or len(header.strip()) > 18:
            raise bad_parameter("Last-Event-ID", f"expected an event id (a non-negative integer), got {header[:40]!r}")
        return int(header.strip())

    def _events(self, slot: _StreamSlot, cursor: int | None, assets: list[str] | None,
                trace_id: str) -> Iterator[bytes]:
        """The response body; runs after the request's middleware finished (its pooled connection
        is back in the pool), on the worker thread, until the client leaves or the time is up."""
        conn = slot.conn
        hold = None
        pending = None          # a price_update held back for more prices
        started = last_sent = time.monotonic()
        sent = 0
        try:
            if cursor is None:
                (start,) = conn.execute(q("extras_stream_start"), {"assets": assets,
                                                                   "grace": START_GRACE_SECONDS}).fetchone()
                cursor = start["cursor"]
                yield (f"retry: {RECONNECT_MILLISECONDS}\n\n"
                       + _frame(cursor, "initial_data", {"event_type": "initial_data", "positions": start["positions"],
                                                         "count": len(start["positions"])})).encode()
            else:
                yield f"retry: {RECONNECT_MILLISECONDS}\n: stream of position changes after id {cursor}\n\n".encode()
            while True:
                (result,) = conn.execute(q("extras_stream_fetch"), {
                    "after": cursor, "limit": FETCH_LIMIT, "hold": json.dumps(hold) if hold else None,
                    "grace": GAP_GRACE_SECONDS, "assets": assets}).fetchone()
                progressed = result["cursor"] != cursor
                cursor, hold = result["cursor"], result["hold"]
                ready = []
                for event in result["events"]:
                    if event["event"] == "price_update":
                        pending = _merge_prices(pending, event)
                        continue
                    if pending is not None:           # in id order: the prices before this change
                        ready.append(pending)
                        pending = None
                    ready.append(event)
                now = time.monotonic()
                if pending is not None and (now - pending["since"] >= PRICE_COALESCE_SECONDS
                                            or now - started >= self.max_seconds):
                    ready.append(pending)
                    pending = None
                if ready:
                    yield "".join(_frame(event["id"], event["event"], event["data"]) for event in ready).encode()
                    sent += len(ready)
                    last_sent = now
                if progressed:
                    continue  # maybe more than one batch: read on before waiting
                if now - started >= self.max_seconds:
                    yield b": stream duration limit reached; reconnect with Last-Event-ID\n\n"
                    return
                if now - last_sent >= self.heartbeat:
                    yield b": heartbeat\n\n"
                    last_sent = now
                wait = HOLD_POLL_SECONDS if hold else max(0.0, min(self.heartbeat - (now - last_sent),
                                                                  self.max_seconds - (now - started)))
                if pending is not None:
                    wait = min(wait, max(0.0, PRICE_COALESCE_SECONDS - (now - pending["since"])))
                # any notification (or none, on timeout) means: read again
                for _ in conn.notifies(timeout=wait, stop_after=1):
                    pass
        except psycopg.Error as exc:
            # the database went away mid-stream: end it; the client reconnects and resumes
            log.warning("live stream ended by a database error", extra={"trace_id": trace_id, "error": str(exc)})
        finally:
            slot.release()
            log.info("live stream closed", extra={"trace_id": trace_id, "events": sent,
                                                  "seconds": round(time.monotonic() - started, 3)})


def _frame(event_id: int, event: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _merge_prices(pending: dict | None, event: dict) -> dict:
    """A price_update held back, with a newer one folded in: the newer price per symbol and
    figures per position win, the id and timestamp are the newer one's."""
    if pending is None:
        return {**event, "since": time.monotonic()}
    data, new = pending["data"], event["data"]
    positions = {p["id"]: p for p in data["positions"]}
    positions.update((p["id"], p) for p in new["positions"])
    merged = {**new, "prices": {**data["prices"], **new["prices"]},
              "positions": sorted(positions.values(), key=lambda p: (p["asset"], p["mode"]))}
    return {**event, "data": merged, "since": pending["since"]}
