"""Request pipeline: trace id and access log, one pooled connection per request, auth, rate limit.

Order matters and is fixed in create_app: Trace -> Connection -> Auth -> RateLimit. Falcon runs
every process_response (in reverse order) even when an earlier step raised, so the connection is
always returned to the pool and every response carries X-Trace-Id and gets its access-log line.
"""
from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

import falcon
import psycopg
from psycopg_pool import ConnectionPool

from app import logs
from app.api import docs
from app.api.errors import ApiError
from app.api.keys import digest
from app.api.metrics import RATE_LIMITED, REQUEST_SECONDS
from app.db import q

access_log = logging.getLogger("position_manager.api.access")

# Paths that need no API key: load balancers, metrics scrapers (they carry no key names and no
# secrets), the schema and its browsable page (/docs and its assets).
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.yaml"}) | docs.PATHS
# A trace id from the caller is echoed only when it is a sane token (it goes into logs and SQL).
_TRACE = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


class TraceMiddleware:
    """X-Trace-Id echoed or generated; one JSON access-log line per request, and its duration in
    pm_api_request_duration_seconds by route template (never the raw path: bounded labels)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        given = req.get_header("X-Trace-Id")
        req.context.trace_id = given if given and _TRACE.match(given) else uuid.uuid4().hex
        req.context.token = logs.trace_id_var.set(req.context.trace_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        resp.set_header("X-Trace-Id", req.context.trace_id)
        seconds = time.perf_counter() - req.context.started
        REQUEST_SECONDS.labels(req.uri_template or "unmatched", req.method, str(resp.status_code)).observe(seconds)
        duration_ms = round(seconds * 1000, 3)
        access_log.info("request", extra={
            "trace_id": req.context.trace_id, "method": req.method, "path": req.path,
            "status": resp.status_code, "duration_ms": duration_ms,
        })
        logs.trace_id_var.reset(req.context.token)


class ConnectionMiddleware:
    """At most one pooled connection per request, taken on first use, always given back."""

    def __init__(self, pool: ConnectionPool):
        self.pool = pool

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.pool = self.pool
        req.context.conn = None

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        conn = req.context.get("conn")
        if conn is not None:
            req.context.conn = None
            recent_use = getattr(self.pool, "recent_use", None)
            if recent_use is not None and not conn.broken:
                recent_use.used(conn)
            # A connection broken by a lost server is discarded by the pool, not reused.
            self.pool.putconn(conn)


def connection(req: falcon.Request) -> psycopg.Connection:
    """The request's connection (autocommit: every statement is one SQL function call)."""
    conn = req.context.conn
    if conn is None:
        conn = req.context.pool.getconn()
        req.context.conn = conn
        if not conn.autocommit:
            conn.autocommit = True
    return conn


class AuthMiddleware:
    """X-API-Key against every valid key, in constant time (no early exit on a match)."""

    def __init__(self, keys: dict[str, int], lookup=None):
        self.keys = [(key.encode("utf-8"), key) for key in keys]
        # Keys stored in the database (app/api/extras/auth.py): lookup(req, key) -> StoredKey | None,
        # asked only when no environment key matched; it sets req.context.stored_key.
        self.lookup = lookup

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.api_key = None
        if req.path in PUBLIC_PATHS:
            return
        given = (req.get_header("X-API-Key") or "").encode("utf-8")
        matched = None
        for encoded, key in self.keys:
            if hmac.compare_digest(given, encoded):
                matched = key
        if matched is None and given and self.lookup is not None and self.lookup(req, given.decode("utf-8", "replace")):
            matched = given.decode("utf-8", "replace")
        if matched is None:
            raise ApiError(401, "unauthorized", "missing or invalid X-API-Key header")
        req.context.api_key = matched


def actor(req: falcon.Request) -> str:
    """Who asked, for the audit trail: a stored key's name, else the environment key's digest
    prefix, never the key."""
    stored = req.context.get("stored_key")
    if stored:
        return f"key:{stored.name}"
    key = req.context.get("api_key")
    return "api:" + digest(key)[:12] if key else "api"


class RateLimitMiddleware:
    """Per-key requests/minute, counted in PostgreSQL (pm.rate_limit_hit): exact across workers and hosts."""

    def __init__(self, limits: dict[str, int]):
        self.limits = {key: (limit, digest(key)) for key, limit in limits.items()}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = req.context.api_key
        if key is None:
            return
        stored = req.context.get("stored_key")  # a key of pm.api_keys has its own limit
        limit, hashed = (stored.rate_limit, stored.key_hash) if stored else self.limits[key]
        allowed, hits, reset_seconds = connection(req).execute(
            q("api_rate_limit_hit"), {"key_hash": hashed, "limit": limit}).fetchone()
        resp.set_header("X-RateLimit-Limit", str(limit))
        resp.set_header("X-RateLimit-Remaining", str(max(limit - hits, 0)))
        resp.set_header("X-RateLimit-Reset", str(reset_seconds))
        if not allowed:
            RATE_LIMITED.inc()
            raise ApiError(429, "rate_limited",
                           f"rate limit of {limit} requests per minute exceeded; retry in {reset_seconds} s",
                           {"Retry-After": str(reset_seconds)})
