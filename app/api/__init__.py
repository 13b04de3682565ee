"""The REST API: a Falcon WSGI app built from its dependencies.

`create_app(pool, settings)` wires resources and middleware (tests pass their own pool and
settings); `get_app()` reads the environment and is what gunicorn loads, once per worker, after
the fork (see app/api/gunicorn_conf.py), so each worker owns its own connection pool.
"""
from __future__ import annotations

import time

import falcon
from psycopg_pool import ConnectionPool

from app import logs
from app.api import docs, errors, extras, resources
from app.api.cache import PortfolioCache, ReadCache
from app.api.health import BrokerProbe, HealthResource
from app.api.access import AccessMiddleware
from app.api.metrics import MetricsResource
from app.api.middleware import BodyLimitMiddleware, ConnectionMiddleware, TraceMiddleware
from app.settings import Settings, load, require_api_keys

# Waiting longer than this for a pooled connection means the database is in trouble: answer 503.
POOL_TIMEOUT_SECONDS = 3.0
# No API statement should run longer; gunicorn's worker timeout is 30 s.
STATEMENT_TIMEOUT_MS = 15000

EXPOSURE_FIELDS = ("total_exposure_usdt", "net_exposure_usdt", "calculated_at")
PNL_FIELDS = ("total_unrealized_pnl_usdt", "total_realized_pnl_usdt", "total_pnl_usdt", "calculated_at")


def create_app(pool: ConnectionPool, settings: Settings, broker: BrokerProbe | None = None) -> falcon.App:
    middleware = [TraceMiddleware(), BodyLimitMiddleware(settings.max_body_bytes), ConnectionMiddleware(pool),
                  AccessMiddleware(settings)]
    app = falcon.App(middleware=middleware)
    app.add_error_handler(Exception, errors.handle)
    app.add_error_handler(falcon.HTTPError, errors.handle)

    cache = PortfolioCache(float(settings.metrics_cache_ttl))
    broker = broker or BrokerProbe(settings.rabbitmq_host, settings.rabbitmq_port)
    app.add_route("/health", HealthResource(pool, broker, settings.service_name, bool(settings.ws_gateway_url),
                                            settings.health_roles))
    app.add_route("/metrics", MetricsResource(pool, broker, settings.service_name, settings.health_roles))
    app.add_route("/openapi.yaml", resources.OpenApiResource())
    docs_page = docs.DocsResource()
    app.add_route("/docs", docs_page)
    app.add_route("/docs/{name}", docs_page, suffix="asset")
    app.add_route("/api/v1/positions", resources.PositionsResource(ReadCache.for_ttl(settings.metrics_cache_ttl)))
    app.add_route("/api/v1/positions/{asset}", resources.PositionResource(ReadCache.for_ttl(settings.metrics_cache_ttl)))
    app.add_route("/api/v1/positions/{asset}/validate", resources.ValidateResource())
    app.add_route("/api/v1/positions/{asset}/snapshot", resources.SnapshotResource())
    app.add_route("/api/v1/positions/{asset}/snapshots", resources.SnapshotsResource())
    app.add_route("/api/v1/portfolio", resources.PortfolioResource(cache))
    app.add_route("/api/v1/portfolio/exposure", resources.PortfolioPartResource(cache, "exposure", EXPOSURE_FIELDS))
    app.add_route("/api/v1/portfolio/pnl", resources.PortfolioPartResource(cache, "pnl", PNL_FIELDS))
    if settings.bench_reference:
        app.add_route("/bench/select1", resources.SelectOneResource())
    extras.register(app, settings)  # manual control, statistics, history, scoped keys, stream
    return app


class RecentUseCheck:
    """Pool `check`: a round trip only for a connection idle longer than `idle_seconds`.

    ConnectionPool.check_connection runs an empty query on every checkout. The API checks out once
    per request, so that would be one extra round trip per request; a connection that served a
    request a moment ago is trusted instead. If the server died in that moment, the
    request fails with 503 + Retry-After and the pool discards the broken connection.
    """

    def __init__(self, idle_seconds: float = 2.0):
        self.idle_seconds = idle_seconds
        self._used_at: dict[int, float] = {}

    def __call__(self, conn) -> None:
        used_at = self._used_at.get(id(conn))
        if used_at is None or time.monotonic() - used_at > self.idle_seconds:
            ConnectionPool.check_connection(conn)

    def used(self, conn) -> None:
        self._used_at[id(conn)] = time.monotonic()
        if len(self._used_at) > 1000:  # ids of closed connections: drop them now and then
            self._used_at.clear()


def make_api_pool(settings: Settings, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> ConnectionPool:
    """The worker's pool: the connection settings of app.db.connect, one connection per
    gunicorn thread at least, the cheaper RecentUseCheck, and a statement timeout so that a
    request never holds a gunicorn thread longer than that (57014 -> 503 + Retry-After)."""
    check = RecentUseCheck()
    kwargs = settings.conninfo()
    kwargs["options"] = f"{kwargs.get('options', '')} -c statement_timeout={int(statement_timeout_ms)}".strip()
    pool = ConnectionPool(
        kwargs=kwargs,
        min_size=1,
        max_size=max(settings.db_pool_size, settings.api_threads),
        timeout=POOL_TIMEOUT_SECONDS,
        name=f"{settings.service_name}-api",
        check=check,
        reconnect_timeout=0,
    )
    pool.recent_use = check
    return pool


def get_app() -> falcon.App:
    """gunicorn entry point (`app.api:get_app()`): settings from the environment, JSON logs, a pool."""
    settings = require_api_keys(load())
    logs.setup(settings.service_name, settings.log_level)
    return create_app(make_api_pool(settings), settings)
