"""Request pipeline: trace id and access log, one pooled connection per request (then the access
check of app/api/access.py: credentials, scope, rate limit).

Order matters and is fixed in create_app: Trace -> BodyLimit -> Connection -> Access. Falcon runs
every process_response (in reverse order) even when an earlier step raised, so the connection is
always returned to the pool and every response carries X-Trace-Id and gets its access-log line.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import re
import time
import uuid

import falcon
import psycopg
from psycopg_pool import ConnectionPool

from app import logs
from app.api.errors import ApiError
from app.api.metrics import REQUEST_SECONDS

access_log = logging.getLogger("position_manager.api.access")

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


class BodyLimitMiddleware:
    """A body announced longer than POSITION_MANAGER_MAX_BODY_BYTES is answered 413 before any of
    it is read (a chunked one is cut by app.api.extras.resources.json_body); every route."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.max_body_bytes = self.max_bytes
        length = req.content_length  # falcon: 400 when the header is not a non-negative integer
        if length is not None and length > self.max_bytes:
            # Nothing of the body is read, and the connection is not kept alive: a server that kept
            # it would first read (and discard) the announced body to find the next request.
            # gunicorn hands the client socket to the app; shutting it for reading ends that.
            client = req.env.get("gunicorn.socket")
            if client is not None:
                try:
                    client.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            raise ApiError(413, "payload_too_large", f"body of {length} bytes is larger than {self.max_bytes} bytes")


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


def raw_connection(req: falcon.Request) -> psycopg.Connection:
    """The request's pooled connection (autocommit: every statement is one SQL function call),
    without admission: for app.api.access and the resources that fold admission into their statement."""
    conn = req.context.conn
    if conn is None:
        conn = req.context.pool.getconn()
        req.context.conn = conn
        if not conn.autocommit:
            conn.autocommit = True
    return conn


def connection(req: falcon.Request) -> psycopg.Connection:
    """The request's connection, the request admitted first (app/api/access.py): a resource that
    folds admission into its own statement gets here only on its other paths."""
    conn = raw_connection(req)
    admission = req.context.get("admission")
    if admission is not None and not admission.done:
        admission.run(conn)
    return conn


def actor(req: falcon.Request) -> str:
    """Who asked, for the audit trail (app.api.access.Caller.actor): a stored key's name, a token's
    subject, else the environment key's digest prefix; never a key."""
    caller = req.context.get("caller")
    return caller.actor if caller is not None else "api"


def client_addr(req: falcon.Request) -> str | None:
    """The client's address for the audit trail: the TCP peer (forwarding headers are not trusted)."""
    try:
        return str(ipaddress.ip_address((req.remote_addr or "").split("%")[0]))
    except ValueError:
        return None
