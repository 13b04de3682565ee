"""Keeps ws-gateway forwarding Bybit's position topic to the position queue.

ws-gateway forwards a private Bybit topic only while a subscription row exists for it. When
WS_GATEWAY_HOST is set, the position consumer runs this on a thread of its own: at start, and then
every POSITION_MANAGER_WS_SUBSCRIPTION_INTERVAL seconds (so that a ws-gateway that lost its
subscriptions gets it back), it sends

    POST http://{WS_GATEWAY_HOST}:{WS_GATEWAY_PORT}/api/v1/subscriptions
    X-API-Key: {WS_GATEWAY_API_KEY}
    {"channel_type": "position", "requesting_service": "<POSITION_MANAGER_SERVICE_NAME>"}

A 2xx answer or 409 (the subscription exists already) means subscribed. Anything else (another
status, no answer within 5 s, a refused connection) is retried with backoff (1 s, 2 s, 4 s, ...
at most 60 s). The thread never touches the broker connection or the consumer's
database connection, so consuming goes on whatever ws-gateway does. Each outcome is recorded with
pm.record_subscription (upstream_subscriptions, provider ws-gateway, channel position), which
/health shows.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import psycopg
import requests

from app import broker
from app import db as appdb
from app.settings import Settings

log = logging.getLogger("position_manager.ws_gateway")

PROVIDER, CHANNEL = "ws-gateway", "position"
REQUEST_TIMEOUT_SECONDS = 5.0
RETRY_CAP_SECONDS = 60.0


def request_subscription(settings: Settings, post: Callable = requests.post) -> tuple[bool, str]:
    """One request; (subscribed, what happened) without raising."""
    try:
        response = post(settings.ws_gateway_url, timeout=REQUEST_TIMEOUT_SECONDS,
                        headers={"X-API-Key": settings.ws_gateway_api_key},
                        json={"channel_type": CHANNEL, "requesting_service": settings.service_name})
    except requests.RequestException as exc:
        return False, f"{type(exc).__name__}: {exc}"
    status = f"HTTP {response.status_code}"
    if 200 <= response.status_code < 300:
        return True, status
    if response.status_code == 409:
        return True, f"{status} (exists already)"
    return False, f"{status}: {response.text.strip()[:300]}"


class Subscription:
    """The request loop, on a daemon thread; start() and stop() from the consumer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.backoff = broker.Backoff(base=1.0, cap=RETRY_CAP_SECONDS)
        self.db: psycopg.Connection | None = None
        self.thread = threading.Thread(target=self._run, name="ws-gateway-subscription", daemon=True)

    def start(self) -> None:
        log.info("requesting ws-gateway's position topic", extra={
            "url": self.settings.ws_gateway_url, "interval_seconds": self.settings.ws_subscription_interval})
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=REQUEST_TIMEOUT_SECONDS + 2)
        if self.db is not None:
            self.db.close()

    def _run(self) -> None:
        while not self.stopping.is_set():
            subscribed, status = request_subscription(self.settings)
            if subscribed:
                self.backoff.reset()
                delay = float(self.settings.ws_subscription_interval)
                log.info("ws-gateway subscription requested", extra={"status": status})
            else:
                delay = self.backoff.next_delay()
                log.warning("ws-gateway subscription failed, retrying", extra={
                    "status": status, "retry_in_seconds": round(delay, 2), "url": self.settings.ws_gateway_url})
            self._record(subscribed, status)
            self.stopping.wait(delay)

    def _record(self, subscribed: bool, status: str) -> None:
        """Keep the outcome for /health; a database problem is logged, never fatal here."""
        try:
            if self.db is None or self.db.closed or self.db.broken:
                self.db = appdb.connect(self.settings, autocommit=True)
            appdb.write(self.db, "pipeline_record_subscription", {
                "provider": PROVIDER, "channel": CHANNEL, "subscribed": subscribed, "status": status})
        except psycopg.Error as exc:
            log.warning("could not record the ws-gateway subscription state", extra={"error": str(exc).strip()})
            if self.db is not None and (self.db.closed or self.db.broken):
                self.db = None
