"""GET /metrics (no key): JSON by default, the Prometheus exposition format when Accept asks for it.

Two kinds of figures, kept where they arise:

* The API's own (request duration by route, method and status; rate-limited requests; portfolio
  cache hits and misses) are prometheus_client counters and histograms in this process. Under
  gunicorn every worker is a process of its own, so they run in prometheus_client's multiprocess
  mode: each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (bin/serve sets one up,
  app/api/gunicorn_conf.py) and a scrape of any worker reads them all. They are per API instance:
  with several API containers, Prometheus scrapes each (the usual setup).
* The service's figures (consumer roles, relay, outbox, dead letters, foreign writes, counters) are
  in PostgreSQL: the consumers and the relay run in processes (containers) of their own and write
  their figures with their heartbeats (app/figures.py); pm.metrics reads them at scrape time. They
  are the same from every API instance.

Accept: `text/plain` or `application/openmetrics-text` (what Prometheus sends) selects that format
(prometheus_client's own negotiation); anything else, or no Accept, gets JSON with at least
timestamp, database_connected, queue_connected and portfolio_cache_hit_rate. No key names, no
secrets: nothing here is labelled by API key.
"""
from __future__ import annotations

import json
import logging
import os

import falcon
import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from psycopg_pool import ConnectionPool, PoolTimeout

from app.api.health import HEALTH_DB_TIMEOUT, BrokerProbe, utc_now_iso
from app.db import q
from app.figures import BUCKETS

log = logging.getLogger("position_manager.api")

# The API's own metrics, registered in a registry of their own (not the library's global one): in
# multiprocess mode they are read from the workers' files instead.
API_REGISTRY = CollectorRegistry(auto_describe=True)
REQUEST_SECONDS = Histogram("pm_api_request_duration_seconds", "API request duration, by route, method and status",
                            ["route", "method", "status"], buckets=BUCKETS, registry=API_REGISTRY)
RATE_LIMITED = Counter("pm_api_rate_limited_requests", "API requests refused with 429 by the per-key rate limit",
                       registry=API_REGISTRY)
CACHE_REQUESTS = Counter("pm_api_portfolio_cache_requests", "Portfolio requests served from the per-process cache "
                         "(result=hit) or computed (result=miss)", ["result"], registry=API_REGISTRY)

# Families of the figures the consumer roles and the relay write (app/figures.py): counter
# "family:label" -> (metric, help, label name); histograms; gauges.
ROLE_COUNTERS = {
    "messages": ("pm_consumer_messages", "Messages a consumer role finished, by outcome "
                 "(applied, duplicate, stale, ignored: acknowledged; invalid, failed: dead-lettered)", "status"),
    "published": ("pm_relay_events_published", "Events the relay published (broker-confirmed), by event type",
                  "event_type"),
}
ROLE_HISTOGRAMS = {
    "batch_seconds": ("pm_consumer_batch_seconds", "Time to apply and commit one batch of messages"),
    "message_seconds": ("pm_consumer_message_seconds",
                        "Time from a message's arrival at the consumer to its acknowledgement"),
    "publish_seconds": ("pm_relay_batch_seconds", "Time to publish, confirm and mark one batch of outbox rows"),
}
ROLE_GAUGES = {
    "queue_depth": ("pm_consumer_queue_depth", "Messages ready in the role's queue (not yet delivered)"),
    "lag_seconds": ("pm_consumer_lag_seconds", "Age of the oldest message of the last batch when it was applied, "
                    "from the event time the message carries"),
    "oldest_unprocessed_seconds": ("pm_consumer_oldest_unprocessed_seconds",
                                   "Age of the oldest message the consumer holds unacknowledged "
                                   "(from its event time, else its arrival); 0 when none"),
}


def wants_exposition(accept: str | None) -> bool:
    types = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
    return any(t in ("text/plain", "application/openmetrics-text") for t in types)


def multiprocess_dir() -> str | None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


def api_families():
    """The API's metric families: of every gunicorn worker in multiprocess mode, else of this process."""
    path = multiprocess_dir()
    return list(MultiProcessCollector(None, path=path).collect() if path else API_REGISTRY.collect())


def _sample_sum(families, name: str, **labels) -> float:
    return sum(s.value for f in families for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


class ServiceCollector:
    """The figures of one scrape (pm.metrics, broker probe) as Prometheus metric families."""

    def __init__(self, figures: dict | None, queue_connected: bool, api: list):
        self.figures = figures
        self.queue_connected = queue_connected
        self.api = api

    def collect(self):
        yield from self.api
        yield GaugeMetricFamily("pm_database_connected", "1 when this API instance reached PostgreSQL",
                                value=1 if self.figures is not None else 0)
        yield GaugeMetricFamily("pm_queue_connected", "1 when RabbitMQ accepted a TCP connection",
                                value=1 if self.queue_connected else 0)
        f = self.figures
        if f is None:
            return
        for name, value, help_text in (
                ("pm_positions", f["positions_count"], "Positions (rows of the shared table)"),
                ("pm_open_positions", f["open_positions_count"], "Open positions"),
                ("pm_outbox_pending", f["outbox_pending"], "Outbox events not yet published by the relay"),
                ("pm_outbox_oldest_pending_seconds", f["outbox_oldest_pending_seconds"] or 0,
                 "Age of the oldest unpublished outbox event (0 when none)"),
                ("pm_foreign_writes_24h", f["foreign_writes_24h"],
                 "Changes of positions by writers other than this service in the last 24 hours")):
            yield GaugeMetricFamily(name, help_text, value=value)
        counters = f["counters"]
        yield CounterMetricFamily("pm_foreign_writes", "Changes of positions by writers other than this service",
                                  value=counters.get("foreign_writes", 0))
        yield CounterMetricFamily("pm_dead_letters", "Messages sent to the dead-letter queue",
                                  value=counters.get("dead_letters", 0))
        events = CounterMetricFamily("pm_service_events", "The service's event counters (pm.counters), by name",
                                     labels=["name"])
        for name, value in sorted(counters.items()):
            events.add_metric([name], value)
        yield events
        yield from self._roles(f["consumers"])

    def _roles(self, consumers: dict):
        alive = GaugeMetricFamily("pm_role_alive", "1 when a process of the role wrote a heartbeat within the "
                                  "timeout", labels=["role"])
        age = GaugeMetricFamily("pm_role_heartbeat_age_seconds", "Seconds since the role's newest heartbeat",
                                labels=["role"])
        counters = {fam: CounterMetricFamily(m, h, labels=["role", label]) for fam, (m, h, label) in ROLE_COUNTERS.items()}
        hists = {fam: HistogramMetricFamily(m, h, labels=["role"]) for fam, (m, h) in ROLE_HISTOGRAMS.items()}
        gauges = {fam: GaugeMetricFamily(m, h, labels=["role"]) for fam, (m, h) in ROLE_GAUGES.items()}
        for role, c in sorted(consumers.items()):
            alive.add_metric([role], 1 if c["alive"] else 0)
            if c["seconds_since_heartbeat"] is not None:
                age.add_metric([role], c["seconds_since_heartbeat"])
            values = c.get("counters") or {}
            for key, value in sorted(values.items()):
                family, _, label = key.partition(":")
                if family in counters and label:
                    counters[family].add_metric([role, label], value)
            for family in hists:
                if f"{family}_count" in values:
                    buckets = [(le, values.get(f"{family}_bucket:{le}", 0))
                               for le in [repr(b) for b in BUCKETS] + ["+Inf"]]
                    hists[family].add_metric([role], buckets, sum_value=values.get(f"{family}_sum", 0))
            for name, value in (c.get("gauges") or {}).items():
                if name in gauges and value is not None:
                    gauges[name].add_metric([role], value)
        yield alive
        yield age
        yield from counters.values()
        yield from hists.values()
        yield from gauges.values()


class MetricsResource:
    def __init__(self, pool: ConnectionPool, broker: BrokerProbe, service: str, roles: tuple[str, ...] = ()):
        self.pool = pool
        self.broker = broker
        self.service = service
        self.roles = list(roles)

    def _figures(self) -> dict | None:
        try:
            with self.pool.connection(timeout=HEALTH_DB_TIMEOUT) as conn:
                conn.autocommit = True
                return conn.execute(q("api_metrics"), {"roles": self.roles}).fetchone()[0]
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning("metrics: database unreachable: %s", exc)
            return None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        queue_connected = self.broker.reachable()
        figures = self._figures()
        api = api_families()
        if wants_exposition(req.get_header("Accept")):
            registry = CollectorRegistry(auto_describe=False)
            registry.register(ServiceCollector(figures, queue_connected, api))
            encoder, content_type = choose_encoder(req.get_header("Accept"))
            resp.content_type = content_type
            resp.data = encoder(registry)
            return
        hits = _sample_sum(api, "pm_api_portfolio_cache_requests_total", result="hit")
        misses = _sample_sum(api, "pm_api_portfolio_cache_requests_total", result="miss")
        body = {
            "timestamp": utc_now_iso(),
            "service": self.service,
            "database_connected": figures is not None,
            "queue_connected": queue_connected,
            "portfolio_cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "portfolio_cache": {"hits": int(hits), "misses": int(misses)},
            "api": {"requests": int(_sample_sum(api, "pm_api_request_duration_seconds_count")),
                    "rate_limited_requests": int(_sample_sum(api, "pm_api_rate_limited_requests_total"))},
        }
        if figures is not None:
            body.update(figures)
        resp.content_type = falcon.MEDIA_JSON
        resp.text = json.dumps(body)
