"""The position consumer asks ws-gateway (a local fake, tests/ytrader.py) to forward Bybit's
position topic: at start and periodically, with backoff after failures, recording the outcome
for /health, and never holding up consuming while ws-gateway is slow or away."""
from __future__ import annotations

import threading
from decimal import Decimal as D

from bench.common import free_port
from tests.pipeline import messages as m
from tests.pipeline.conftest import wait_for
from tests.ytrader import FakeWsGateway


def ws_env(port: int, **extra: str) -> dict[str, str]:
    return {"WS_GATEWAY_HOST": "127.0.0.1", "WS_GATEWAY_PORT": str(port), "WS_GATEWAY_API_KEY": "ws-test-key",
            "POSITION_MANAGER_WS_SUBSCRIPTION_INTERVAL": "1", **extra}


def subscription(pipe) -> dict | None:
    return pipe.one("SELECT pm.health() -> 'subscriptions' -> 'ws-gateway/position'")


def test_requested_at_start_retried_with_backoff_then_kept_up(pipe):
    with FakeWsGateway(statuses=[503, 500, 201, 409]) as ws:
        proc = pipe.start("position", **ws_env(ws.port))
        wait_for(lambda: len(ws.requests) >= 5, what="five requests (two failures, then every interval)")
        first = ws.requests[0]
        assert first["path"] == "/api/v1/subscriptions"
        assert first["headers"]["X-API-Key"] == "ws-test-key"
        assert first["body"] == {"channel_type": "position", "requesting_service": "position-manager"}
        assert all(r["body"] == first["body"] for r in ws.requests)
        state = wait_for(lambda: (s := subscription(pipe)) and s["last_status"] == "HTTP 409 (exists already)" and s,
                         what="the 409 recorded")
        assert state["subscribed"] is True and state["failures"] == 0 and state["last_success_at"].endswith("Z")
    failures = [r for r in pipe.log_records(proc) if r.get("message") == "ws-gateway subscription failed, retrying"]
    assert [f["status"].split(":")[0] for f in failures[:2]] == ["HTTP 503", "HTTP 500"]
    # backoff: the second failure waits longer than the first (1 s, 2 s, with 20 % jitter)
    assert failures[1]["retry_in_seconds"] > failures[0]["retry_in_seconds"]
    assert proc.poll() is None


def test_failures_are_counted_and_shown(pipe):
    with FakeWsGateway(statuses=[401]) as ws:
        pipe.start("position", **ws_env(ws.port))
        state = wait_for(lambda: (s := subscription(pipe)) and s["failures"] >= 2 and s, what="two failures recorded")
    assert state["subscribed"] is False and state["last_status"].startswith("HTTP 401")
    assert state["last_success_at"] is None


def test_consuming_goes_on_while_ws_gateway_hangs_or_is_away(pipe):
    q = pipe.settings.position_queue
    hold = threading.Event()
    with FakeWsGateway(statuses=[201], hold=hold) as ws:
        proc = pipe.start("position", **ws_env(ws.port))
        wait_for(lambda: ws.requests, what="the request, now held by ws-gateway")
        pipe.publish(q, m.ws_position("BNBUSDT", "2", "Buy", mark="600", avg="590", at=1))
        wait_for(lambda: pipe.position("BNBUSDT"), what="the position event applied meanwhile")
        assert len(ws.requests) == 1 and subscription(pipe) is None   # still waiting for the answer
        hold.set()
        wait_for(lambda: (s := subscription(pipe)) and s["subscribed"], what="the answer recorded")
    pipe.stop(proc)
    # nobody listening at all: the consumer consumes, and says why it is not subscribed
    proc = pipe.start("position", **ws_env(free_port()))
    pipe.publish(q, m.ws_position("SOLUSDT", "3", "Sell", mark="150", avg="151", at=2))
    wait_for(lambda: pipe.position("SOLUSDT"), what="the second event applied")
    assert D(pipe.position("SOLUSDT")["size"]) == -3
    state = wait_for(lambda: (s := subscription(pipe)) and not s["subscribed"] and s, what="the failure recorded")
    assert "ConnectionError" in state["last_status"]
    assert proc.poll() is None


def test_no_host_no_request(pipe):
    with FakeWsGateway() as ws:
        proc = pipe.start("position", WS_GATEWAY_PORT=str(ws.port))
        pipe.publish(pipe.settings.position_queue, m.ws_position("BNBUSDT", "2", "Buy", mark="600", avg="590", at=1))
        wait_for(lambda: pipe.position("BNBUSDT"), what="the position event applied")
        assert ws.requests == [] and subscription(pipe) is None
        assert not any("ws-gateway" in r.get("message", "") for r in pipe.log_records(proc))
