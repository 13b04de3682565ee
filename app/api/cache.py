"""Per-process cache of portfolio responses, invalidated by a change made by ANY process.

A cached body is kept with the positions fingerprint it was computed at ("<count>:<sum of
versions>", read in the same statement, so in the same snapshot as the figures; every committed
position change bumps a version). It is served only while it is younger than the TTL
(POSITION_MANAGER_METRICS_CACHE_TTL) AND the fingerprint is still the same: one cheap query
instead of the portfolio aggregation. A fill committed by a consumer (another process) changes
it, so the very next request recomputes. Chosen over the newest outbox id, which misses a change
that took its outbox id before another change but committed after it, and over LISTEN pm_outbox
in a background thread (an extra connection per worker; a notification arrives a moment after
the commit, and none while reconnecting).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import psycopg

from app.api.metrics import CACHE_REQUESTS
from app.db import q


@dataclass(frozen=True)
class _Entry:
    fingerprint: str
    expires_at: float
    body: str


class PortfolioCache:
    def __init__(self, ttl_seconds: float, max_entries: int = 256):
        self.ttl = float(ttl_seconds)
        self.max_entries = max_entries
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, conn: psycopg.Connection,
            compute: Callable[[psycopg.Connection], tuple[str, str]]) -> str:
        """The body for key: from the cache when still valid, else compute(conn) -> (fingerprint, body)."""
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() < entry.expires_at:
            (fingerprint,) = conn.execute(q("api_positions_fingerprint")).fetchone()
            if fingerprint == entry.fingerprint:
                self.hits += 1
                CACHE_REQUESTS.labels("hit").inc()
                return entry.body
        self.misses += 1
        CACHE_REQUESTS.labels("miss").inc()
        fingerprint, body = compute(conn)
        if self.ttl > 0:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()  # keys are (asset, flags): bounded, but never let them grow
                self._entries[key] = _Entry(fingerprint, time.monotonic() + self.ttl, body)
        return body


# Single positions and position lists are kept this long at most (below the portfolio's TTL when
# that is shorter): long enough to spare the rendering under load, short enough that the fields
# moving with the clock at the same version (time_held_minutes, price_is_stale) are at most this late.
READ_TTL_SECONDS = 1.0


class ReadCache:
    """Per-process bodies with the version they were rendered at: a single Position by (asset, mode)
    with its version, a page of the positions list by its parameters with the positions
    fingerprint. An entry younger than the TTL is offered to the statement that admits the request
    as the known version (pm.api_read_position, pm.api_list_positions): that statement reads the
    current version anyway and renders only when it differs (any committed change bumps it, in any
    process). So a cached body is never older than the last change; only the clock-derived fields
    may be up to the TTL late."""

    def __init__(self, ttl_seconds: float, max_entries: int = 4096):
        self.ttl = float(ttl_seconds)
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[Hashable, bytes, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_ttl(cls, metrics_ttl) -> "ReadCache":
        return cls(min(float(metrics_ttl), READ_TTL_SECONDS))

    def known(self, key: Hashable) -> tuple[Hashable | None, bytes | None]:
        """(version, encoded body) of a fresh entry, else (None, None)."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry[2]:
            return None, None
        return entry[0], entry[1]

    def store(self, key: Hashable, version: Hashable, body: str) -> bytes:
        """Keeps the body encoded (a list of 500 Positions is ~400 kB: encoded once, not per
        response) and returns it so."""
        data = body.encode()
        if self.ttl <= 0:
            return data
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (version, data, time.monotonic() + self.ttl)
        return data
