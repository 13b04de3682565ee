"""The live stream (GET /api/v1/stream, Server-Sent Events) and stored keys over real HTTP: a real
gunicorn (bin/serve, gthread), a change committed through SQL arrives as an event, heartbeats,
Last-Event-ID resume, other requests answered while streams are open, the per-worker stream limit,
keys made and revoked with bin/api-keys."""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import requests

from tests.api.conftest import API_KEY, ROOT, server_environ
from tests.sql.calls import fill, push_prices


class SseClient:
    """Reads one event stream in a thread; events and comments land in a queue as they arrive."""

    def __init__(self, url: str, headers: dict[str, str]):
        self.response = requests.get(url, headers=headers, stream=True, timeout=(5, 30))
        self.items: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event: dict = {}
        try:
            for line in self.response.iter_lines(chunk_size=1, decode_unicode=True):
                if line == "":
                    if "data" in event:  # as EventSource: a block without data dispatches nothing
                        self.items.put(("event", event))
                    event = {}
                elif line.startswith(":"):
                    self.items.put(("comment", line[1:].strip()))
                else:
                    field, _, value = line.partition(":")
                    event[field] = value.removeprefix(" ")
        except (requests.RequestException, AttributeError, ValueError):
            pass
        self.items.put(("end", None))

    def next(self, kind: str, deadline_seconds: float = 10.0):
        """The next item of that kind (others are skipped); fails after the deadline."""
        deadline = time.monotonic() + deadline_seconds
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {kind} within {deadline_seconds} s"
            try:
                got, value = self.items.get(timeout=remaining)
            except queue.Empty:
                continue
            if got == kind:
                return value
            assert got != "end", f"stream ended while waiting for {kind}"

    def close(self) -> None:
        self.response.close()


POSITION_EVENTS = ("position_created", "position_updated", "position_closed")


def position_event(item: dict) -> dict:
    assert item["event"] in POSITION_EVENTS, item
    data = json.loads(item["data"])
    assert data["event_type"] == item["event"]
    return {"id": int(item["id"]), "asset": data["asset"], "version": data["version"], "trace_id": data["trace_id"]}


def test_stream_over_gunicorn(start_server, settings, db):
    env = server_environ(settings, POSITION_MANAGER_API_WORKERS="1", POSITION_MANAGER_API_THREADS="3",
                         POSITION_MANAGER_STREAM_HEARTBEAT="1", POSITION_MANAGER_STREAM_MAX_SECONDS="60")
    server = start_server(env)
    url = server.url + "/api/v1/stream"
    headers = {"X-API-Key": API_KEY}
    opened: list[SseClient] = []
    try:
        first = SseClient(url, headers)
        opened.append(first)
        assert first.response.status_code == 200
        assert first.response.headers["Content-Type"].startswith("text/event-stream")
        initial = first.next("event")              # no Last-Event-ID: the open positions first
        assert initial["event"] == "initial_data" and json.loads(initial["data"])["positions"] == []

        fill(db, "BTCUSDT", "Buy", "1", "100", trace="t-stream-1")
        event = position_event(first.next("event"))
        assert (event["asset"], event["version"], event["trace_id"]) == ("BTCUSDT", 1, "t-stream-1")
        assert first.next("comment", 5) == "heartbeat"

        # a second stream; the worker has 3 threads, so 2 streams at most, and one thread stays free
        second = SseClient(url, headers)
        opened.append(second)
        assert [p["asset"] for p in json.loads(second.next("event")["data"])["positions"]] == ["BTCUSDT"]
        answered = requests.get(server.url + "/api/v1/positions/BTCUSDT", headers=headers, timeout=5)
        assert answered.status_code == 200 and answered.json()["version"] == 1
        assert requests.get(server.url + "/health", timeout=5).status_code == 200
        third = requests.get(url, headers=headers, timeout=5)
        assert third.status_code == 503 and third.json()["error_code"] == "too_many_streams"
        assert "Retry-After" in third.headers

        # both streams see the next change
        fill(db, "ETHUSDT", "Sell", "1", "3000")
        assert position_event(first.next("event"))["asset"] == "ETHUSDT"
        last_seen = position_event(second.next("event"))
        assert last_seen["asset"] == "ETHUSDT"

        # disconnect, miss two changes, resume with Last-Event-ID
        second.close()
        first.close()
        fill(db, "BTCUSDT", "Buy", "1", "101", trace="t-missed-1")
        fill(db, "BTCUSDT", "Buy", "1", "102", trace="t-missed-2")
        deadline = time.monotonic() + 10           # the server notices the closed streams at their next write
        while True:
            resumed = SseClient(url, {**headers, "Last-Event-ID": str(last_seen["id"])})
            opened.append(resumed)
            if resumed.response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert resumed.response.status_code == 200
        missed = [position_event(resumed.next("event")) for _ in range(2)]
        assert [(e["asset"], e["version"], e["trace_id"]) for e in missed] == \
            [("BTCUSDT", 2, "t-missed-1"), ("BTCUSDT", 3, "t-missed-2")]
        assert last_seen["id"] < missed[0]["id"] < missed[1]["id"]

        # and it goes on live after the replay
        fill(db, "SOLUSDT", "Buy", "1", "150")
        assert position_event(resumed.next("event"))["asset"] == "SOLUSDT"
    finally:
        for stream in opened:
            stream.close()


def test_keys_made_and_revoked_with_bin_api_keys_over_gunicorn(start_server, settings, db):
    env = server_environ(settings, POSITION_MANAGER_API_WORKERS="2", POSITION_MANAGER_API_THREADS="2")
    server = start_server(env)
    fill(db, "BTCUSDT", "Buy", "1", "100")

    def api_keys(*args):
        return subprocess.run([str(ROOT / "bin" / "api-keys"), *args], env=env, capture_output=True, text=True, timeout=60)

    made = api_keys("create", "grafana-ui", "--scope", "read", "--rate-limit", "50")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("pmk_") and "cannot be shown again" in made.stderr
    listed = api_keys("list")
    assert listed.returncode == 0 and "grafana-ui" in listed.stdout and key not in listed.stdout
    assert api_keys("create", "grafana-ui", "--scope", "read").returncode == 1

    headers = {"X-API-Key": key}
    for _ in range(4):  # every worker knows the key at once: it is looked up per request
        response = requests.get(server.url + "/api/v1/positions/BTCUSDT", headers=headers, timeout=5)
        assert response.status_code == 200 and response.headers["X-RateLimit-Limit"] == "50"
    denied = requests.post(server.url + "/api/v1/prices", headers=headers, json={"BTCUSDT": "1"}, timeout=5)
    assert denied.status_code == 403 and denied.json()["error_code"] == "forbidden"

    assert api_keys("revoke", "grafana-ui").returncode == 0
    for _ in range(4):
        assert requests.get(server.url + "/api/v1/positions/BTCUSDT", headers=headers, timeout=5).status_code == 401
    revoked_again = api_keys("revoke", "grafana-ui")
    assert revoked_again.returncode == 1 and "no live API key" in revoked_again.stderr


# ------------------------------------------------------------------ in-process (falcon TestClient)

def _sse_events(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":") and ": " in line)
        if "data" in fields and fields["event"] != "initial_data":
            events.append(position_event(fields))
    return events


def test_a_stream_ends_after_its_maximum_duration_with_heartbeats_and_live_events(client, db):
    """api_settings: heartbeat 1 s, at most 3 s; a fill committed meanwhile arrives."""
    timer = threading.Timer(0.5, lambda: fill(db, "BTCUSDT", "Buy", "1", "100", trace="t-live"))
    timer.start()
    started = time.monotonic()
    response = client.simulate_get("/api/v1/stream")
    timer.join()
    assert response.status_code == 200 and 2.5 < time.monotonic() - started < 15
    assert response.text.startswith("retry: 1000\n")
    assert response.text.count(": heartbeat") >= 1
    assert response.text.rstrip().endswith("reconnect with Last-Event-ID")
    assert [(e["asset"], e["trace_id"]) for e in _sse_events(response.text)] == [("BTCUSDT", "t-live")]


def test_last_event_id_zero_replays_everything_in_order(client, db, api_settings, make_client):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Buy", "1", "100")
    fill(db, "BTCUSDT", "Buy", "1", "100")
    quick = make_client(api_settings.with_overrides(stream_max_seconds=1))
    events = _sse_events(quick.simulate_get("/api/v1/stream", params={"last_event_id": "0"}).text)
    assert [(e["asset"], e["version"]) for e in events] == [("BTCUSDT", 1), ("ETHUSDT", 1), ("BTCUSDT", 2)]
    after_first = _sse_events(quick.simulate_get("/api/v1/stream", headers={"Last-Event-ID": str(events[0]["id"])}).text)
    assert [e["id"] for e in after_first] == [e["id"] for e in events[1:]]


def test_stream_parameters_and_auth(client, make_client, api_settings):
    assert client.simulate_get("/api/v1/stream", headers={"Last-Event-ID": "abc"}).status_code == 400
    assert client.simulate_get("/api/v1/stream", params={"last_event_id": "-1"}).status_code == 400
    assert client.simulate_get("/api/v1/stream", params={"since": "1"}).status_code == 400
    assert make_client(api_settings, "nope").simulate_get("/api/v1/stream").status_code == 401
    busy = make_client(api_settings.with_overrides(api_threads=1))   # one thread: no stream may take it
    response = busy.simulate_get("/api/v1/stream")
    assert response.status_code == 503 and response.json["error_code"] == "too_many_streams"


def test_a_stream_ends_when_the_database_goes_away_and_resumes_when_it_is_back(start_server, settings, db, pg_proxy):
    """The stream's own connection is cut: the stream ends (its thread and slot are freed), a
    reconnect gets 503 while the database is away, and Last-Event-ID resumes afterwards."""
    env = server_environ(settings, POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(pg_proxy.port),
                         POSITION_MANAGER_API_WORKERS="1", POSITION_MANAGER_API_THREADS="2",
                         POSITION_MANAGER_STREAM_HEARTBEAT="1")
    server = start_server(env)
    url, headers = server.url + "/api/v1/stream", {"X-API-Key": API_KEY}
    stream = SseClient(url, headers)
    try:
        assert stream.next("event")["event"] == "initial_data"
        fill(db, "BTCUSDT", "Buy", "1", "100")
        seen = position_event(stream.next("event"))
        pg_proxy.stop()
        stream.next("end", 15)                          # the body ended instead of hanging
        down = requests.get(url, headers=headers, timeout=10)
        assert down.status_code == 503 and down.json()["error_code"] == "database_unavailable"
        fill(db, "BTCUSDT", "Buy", "1", "101")          # committed while the stream was away
        pg_proxy.start()
        deadline = time.monotonic() + 30
        while True:                                     # the only stream slot of the worker is free again
            resumed = SseClient(url, {**headers, "Last-Event-ID": str(seen["id"])})
            if resumed.response.status_code == 200 or time.monotonic() > deadline:
                break
            resumed.close()
            time.sleep(0.3)
        assert resumed.response.status_code == 200
        assert position_event(resumed.next("event"))["version"] == 2
        resumed.close()
        assert "Traceback" not in server.log()
    finally:
        stream.close()


def test_initial_data_typed_events_coalesced_prices_and_the_asset_filter_over_gunicorn(start_server, settings, db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Sell", "2", "50")
    fill(db, "SOLUSDT", "Buy", "1", "10")
    fill(db, "ADAUSDT", "Buy", "1", "1")
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="1", POSITION_MANAGER_API_THREADS="3",
                                         POSITION_MANAGER_STREAM_HEARTBEAT="1", POSITION_MANAGER_STREAM_MAX_SECONDS="60"))
    http = requests.Session()
    http.headers["X-API-Key"] = API_KEY
    assert http.post(server.url + "/api/v1/positions/ADAUSDT/close", params={"exit_price": "1"}, timeout=5).ok
    assert http.post(server.url + "/api/v1/prices", json={"BTCUSDT": "100", "ETHUSDT": "50", "SOLUSDT": "10"},
                     timeout=5).ok
    assert http.get(server.url + "/api/v1/stream", params={"asset": "BTCUSDT,1000"}, timeout=5).status_code == 400

    stream = SseClient(server.url + "/api/v1/stream?asset=btcusdt,ETHUSDT", {"X-API-Key": API_KEY})
    try:
        initial = stream.next("event")
        data = json.loads(initial["data"])
        assert initial["event"] == "initial_data" and data["count"] == 2
        # exposures 100 and 100 of 210 (SOLUSDT 10; ADAUSDT flat)
        assert [(p["asset"], p["size"], p["position_size_norm"]) for p in data["positions"]] == \
            [("BTCUSDT", "1", "0.47619048"), ("ETHUSDT", "-2", "0.47619048")]

        # one price push of three symbols: one price_update, with the two symbols of the filter
        assert http.post(server.url + "/api/v1/prices", json={"BTCUSDT": "110", "ETHUSDT": "45", "SOLUSDT": "11"},
                         timeout=5).ok
        prices = stream.next("event")
        assert prices["event"] == "price_update" and int(prices["id"]) > int(initial["id"])
        body = json.loads(prices["data"])
        assert body["prices"] == {"BTCUSDT": "110", "ETHUSDT": "45"}
        assert [(p["asset"], p["unrealized_pnl"]) for p in body["positions"]] == [("BTCUSDT", "10"), ("ETHUSDT", "10")]

        # a change of another symbol is not sent; the next one of the filter is, typed
        fill(db, "SOLUSDT", "Buy", "1", "11")
        assert http.post(server.url + "/api/v1/positions/ETHUSDT/close", timeout=5).ok
        closed = stream.next("event")
        assert closed["event"] == "position_closed" and json.loads(closed["data"])["asset"] == "ETHUSDT"
        fill(db, "BTCUSDT", "Buy", "1", "110")
        updated = stream.next("event")
        data = json.loads(updated["data"])
        assert (updated["event"], data["asset"], data["version"]) == ("position_updated", "BTCUSDT", 4)
        assert data["position_size_norm"] == "0.90909091"           # 220 of 242 (SOLUSDT 2 x 11, ETHUSDT flat)
        created = http.post(server.url + "/api/v1/positions", json={"asset": "ETHUSDT", "side": "long", "quantity": "1",
                                                                     "entry_price": "45"}, timeout=5)
        assert created.status_code == 201
        event = stream.next("event")
        assert event["event"] == "position_created" and json.loads(event["data"])["id"] == created.json()["id"]
    finally:
        stream.close()


def test_price_changes_read_apart_are_still_sent_as_one(client, db, api_settings, make_client, monkeypatch):
    """One row per read (FETCH_LIMIT 1), so the stream itself folds the price_update of each read into
    the one it holds back; a position change sends it first, the end of the stream sends the last."""
    from app.api.extras import stream as stream_module
    monkeypatch.setattr(stream_module, "FETCH_LIMIT", 1)
    monkeypatch.setattr(stream_module, "PRICE_COALESCE_SECONDS", 3600)
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Buy", "1", "100")
    (head,) = db.execute("SELECT pm.stream_head()").fetchone()
    push_prices(db, {"BTCUSDT": "101", "ETHUSDT": "99"})
    push_prices(db, {"BTCUSDT": "102"})
    fill(db, "ETHUSDT", "Buy", "1", "99")
    push_prices(db, {"ETHUSDT": "98"})
    quick = make_client(api_settings.with_overrides(stream_max_seconds=1))
    text = quick.simulate_get("/api/v1/stream", params={"last_event_id": str(head)}).text
    blocks = [dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
              for block in text.split("\n\n")]
    events = [(b["event"], json.loads(b["data"]), int(b["id"])) for b in blocks if "data" in b]
    assert [e[0] for e in events] == ["price_update", "position_updated", "price_update"]
    assert events[0][1]["prices"] == {"BTCUSDT": "102", "ETHUSDT": "99"}
    assert [(p["asset"], p["current_price"]) for p in events[0][1]["positions"]] == [("BTCUSDT", "102"), ("ETHUSDT", "99")]
    assert events[2][1]["prices"] == {"ETHUSDT": "98"}
    assert [e[2] for e in events] == sorted(e[2] for e in events) and events[2][2] == db.execute(
        "SELECT pm.stream_head()").fetchone()[0]
