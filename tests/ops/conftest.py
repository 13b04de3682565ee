"""Fixtures of the operations tests: a local HTTP server that answers like Bybit, the environment
of a job pointed at the test database, and small helpers that put positions in place via SQL."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import base_environ
from tests.sql import calls


def bybit_body(prices: dict[str, str], ret_code: int = 0, ret_msg: str = "OK") -> dict:
    """Bybit's /v5/market/tickers envelope with one entry per symbol."""
    return {"retCode": ret_code, "retMsg": ret_msg,
            "result": {"category": "linear",
                       "list": [{"symbol": s, "lastPrice": p, "markPrice": p, "indexPrice": p}
                                for s, p in prices.items()]},
            "retExtInfo": {}, "time": int(time.time() * 1000)}


@dataclass
class Reply:
    status: int = 200
    body: object = None          # dict -> JSON; str/bytes -> sent as is
    delay: float = 0.0


@dataclass
class FakeBybit:
    """Answers each request with the next Reply (the last one repeats); records request paths."""
    url: str = ""
    replies: list[Reply] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def next_reply(self) -> Reply:
        if len(self.replies) > 1:
            return self.replies.pop(0)
        return self.replies[0] if self.replies else Reply(200, bybit_body({}))


@pytest.fixture
def fake_bybit():
    state = FakeBybit()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            state.requests.append(self.path)
            reply = state.next_reply()
            if reply.delay:
                time.sleep(reply.delay)
            body = reply.body
            raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else (
                body.encode() if isinstance(body, str) else (body or b""))
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def job_env(settings):
    """The environment a job gets from cron, pointed at this test's database."""
    def _env(**extra: str) -> dict[str, str]:
        return base_environ(POSTGRES_DB=settings.postgres_db, **extra)
    return _env


def fill(db, asset: str, side: str, qty: str, price: str, fee: str = "0", at: str | None = None,
         mode: str | None = None, position_idx: int | None = None) -> dict:
    """One execution through the SQL core (tests/sql/calls.py), executed now unless `at` says when."""
    return calls.fill(db, asset, side, qty, price, fee=fee, mode=mode, position_idx=position_idx,
                      at=at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def set_price(db, asset: str, price: str, age_seconds: int = 0) -> None:
    """Give every position of asset a price that was set age_seconds ago."""
    calls.set_prices(db, {asset: price})
    if age_seconds:
        db.execute("UPDATE public.positions SET price_updated_at = price_updated_at - make_interval(secs => %s) "
                   "WHERE asset = %s", (age_seconds, asset))
