"""Figures of a long-running process (a consumer role, the relay) and its heartbeat.

The consumers and the relay run in processes of their own (in production, containers of their
own), so their figures cannot live in the API's memory. Each process keeps cumulative counters,
histogram buckets and gauges here, in memory, and writes them every
POSITION_MANAGER_HEARTBEAT_INTERVAL seconds to its row of pm.heartbeats (pm.heartbeat, one small
write transaction): that row is also its heartbeat for /health. /metrics and Grafana read them from
the database (pm.metrics, pm.v_consumers). Nothing here is on the per-message database path.

Names: a counter is "family:label value" or "family"; a histogram is the counters
"family_bucket:<le>" (cumulative), "family_sum" and "family_count", with the buckets of BUCKETS.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from bisect import bisect_left
from datetime import datetime, timezone

import psycopg

from app import db as appdb
from app.settings import Settings

log = logging.getLogger("position_manager.heartbeat")

# Upper bounds (seconds) of the histogram buckets, for every duration the service measures.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = [repr(b) for b in BUCKETS] + ["+Inf"]


class Figures:
    """Cumulative counters, histograms and current gauges of this process."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float | None] = {}
        self._hist: dict[str, list] = {}     # family -> [per-bucket counts (+Inf last), sum]

    def inc(self, family: str, label: str | None = None, by: float = 1) -> None:
        key = family if label is None else f"{family}:{label}"
        self.counters[key] = self.counters.get(key, 0) + by

    def observe(self, family: str, seconds: float) -> None:
        hist = self._hist.setdefault(family, [[0] * len(_LE), 0.0])
        hist[0][bisect_left(BUCKETS, seconds)] += 1
        hist[1] += seconds

    def gauge(self, name: str, value: float | None) -> None:
        self.gauges[name] = None if value is None else round(float(value), 6)

    def as_json(self) -> str:
        counters = dict(self.counters)
        for family, (counts, total) in self._hist.items():
            running = 0
            for le, n in zip(_LE, counts):
                running += n
                counters[f"{family}_bucket:{le}"] = running
            counters[f"{family}_sum"] = round(total, 6)
            counters[f"{family}_count"] = running
        return json.dumps({"counters": counters, "gauges": self.gauges})


class Heartbeat:
    """Writes this process's figures to pm.heartbeats at most every `interval` seconds."""

    def __init__(self, settings: Settings, role: str, figures: Figures) -> None:
        self.role = role
        self.figures = figures
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = datetime.now(timezone.utc)
        self.interval = float(settings.heartbeat_interval)
        self._last = float("-inf")
        self._failing = False

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval

    def beat(self, conn: psycopg.Connection | None) -> bool:
        """One heartbeat on `conn` (its own write transaction). A failure is logged once and
        retried at the next interval: a heartbeat never stops the process's work."""
        self._last = time.monotonic()
        if conn is None or conn.closed or conn.broken:
            return False
        try:
            appdb.write(conn, "heartbeat", {"role": self.role, "instance": self.instance,
                                            "started_at": self.started_at, "figures": self.figures.as_json()})
        except psycopg.Error as exc:
            if not self._failing:
                log.warning("heartbeat not written", extra={"role": self.role, "error": str(exc).strip()})
            self._failing = True
            return False
        self._failing = False
        return True


def event_time(doc, amqp_timestamp: int | None) -> float | None:
    """When a message's event happened (epoch seconds), where the message says: the AMQP timestamp
    property, else the body's timestamp / creationTime / executed_at (ISO 8601, naive = UTC, or
    epoch seconds or milliseconds). None when it cannot be told."""
    if amqp_timestamp:
        return float(amqp_timestamp)
    if not isinstance(doc, dict):
        return None
    for name in ("timestamp", "creationTime", "executed_at"):
        value = doc.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return value / 1000 if value > 1e11 else float(value)
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.timestamp()
    return None
