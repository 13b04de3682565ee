"""GET /health: database (with pm.health() counters), the schema version, RabbitMQ reachability,
and whether each consumer role and the relay are alive.

"schema" says what the database was upgraded to (pm.schema_version()) beside what this code
expects (app/schema.py, from the files under sql/): a database behind the code makes the service
"degraded" (run bin/migrate).

"ws_gateway" says whether ws-gateway forwards Bybit's position topic: `{"enabled": false}` when
WS_GATEWAY_HOST is not set; else what the position consumer recorded of its latest request
(pm.record_subscription: subscribed, last_status, failures, times), `subscribed` null before its
first attempt. A failed latest attempt makes the service "degraded" (the exchange stream is off).

The API does not use RabbitMQ itself, but the consumers of this deployment do: a broker that
cannot be reached makes the service "degraded" (still answering from the database). The broker is
probed with a TCP connect of short timeout, cached a few seconds so that a load balancer polling
/health does not open a socket per poll.

"consumers" has, per role of POSITION_MANAGER_HEALTH_ROLES, "alive" and the seconds since its last
heartbeat (each consumer role and the relay write one to the database every few seconds,
app/figures.py): one that is not alive makes the service "degraded". Only a database that cannot be
reached makes it "unhealthy" (503).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import datetime, timezone

import falcon
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from app import schema
from app.db import q

log = logging.getLogger("position_manager.api")

HEALTH_DB_TIMEOUT = 2.0


class BrokerProbe:
    """Is host:port accepting TCP connections? Answer cached for `ttl` seconds."""

    def __init__(self, host: str, port: int, ttl: float = 5.0, timeout: float = 0.5):
        self.address = (host, port)
        self.ttl = ttl
        self.timeout = timeout
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._up = False

    def reachable(self) -> bool:
        with self._lock:
            if time.monotonic() - self._checked_at < self.ttl:
                return self._up
            try:
                with socket.create_connection(self.address, timeout=self.timeout):
                    self._up = True
            except OSError:
                self._up = False
            self._checked_at = time.monotonic()
            return self._up


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HealthResource:
    def __init__(self, pool: ConnectionPool, broker: BrokerProbe, service: str, ws_gateway: bool = False,
                 roles: tuple[str, ...] = ()):
        self.pool = pool
        self.broker = broker
        self.service = service
        self.ws_gateway = ws_gateway
        self.roles = list(roles)
        self.expected_schema = schema.expected()["version"]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        queue_connected = self.broker.reachable()
        body: dict = {"service": self.service, "queue_connected": queue_connected}
        try:
            with self.pool.connection(timeout=HEALTH_DB_TIMEOUT) as conn:
                conn.autocommit = True
                (counters,) = conn.execute(q("api_health"), {"roles": self.roles}).fetchone()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning("health: database unreachable: %s", exc)
            body.update(status="unhealthy", database_connected=False, positions_count=None,
                        timestamp=utc_now_iso())
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", "5")
        else:
            body.update(counters)
            db_schema = body["schema"] = dict(counters.get("schema") or {}, expected=self.expected_schema)
            db_schema["up_to_date"] = self.expected_schema is None or db_schema.get("version") == self.expected_schema
            ws = body["ws_gateway"] = {"enabled": self.ws_gateway}
            if self.ws_gateway:
                ws.update((counters.get("subscriptions") or {}).get("ws-gateway/position") or {"subscribed": None})
            consumers_alive = all(c["alive"] for c in body["consumers"].values())
            healthy = (queue_connected and db_schema["up_to_date"] and ws.get("subscribed") is not False
                       and consumers_alive)
            body.update(status="healthy" if healthy else "degraded", database_connected=True, timestamp=utc_now_iso())
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps(body)
