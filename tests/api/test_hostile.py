"""Hostile clients against a real gunicorn (bin/serve) and a real database: bodies over the limit
(413 before any of it is read), malformed JSON and wrong content types, huge or repeated query
parameters, header injection in X-Trace-Id, path tricks in {asset}, slow clients that must not
starve the others, many streams from one key (a per-key cap; other keys still get theirs)."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.api.conftest import API_KEY, server_environ
from tests.api.extras.test_stream import SseClient
from tests.sql.calls import fill

MAX_BODY = 4096


@pytest.fixture
def server(start_server, settings, db):
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    return start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="2", POSITION_MANAGER_API_THREADS="4",
                                       POSITION_MANAGER_MAX_BODY_BYTES=str(MAX_BODY),
                                       POSITION_MANAGER_RATE_LIMIT_DEFAULT="100000"))


def raw_request(port: int, head: bytes, body: bytes = b"", read_timeout: float = 10, closed: list | None = None) -> bytes:
    """Send exactly these bytes; return what the server answers before it closes or goes quiet
    (closed gets True appended when the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        received = b""
        try:
            while b"\r\n\r\n" not in received or len(received) < 64:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            sock.settimeout(2)
            while chunk := sock.recv(65536):
                received += chunk
            if closed is not None:
                closed.append(True)
        except (socket.timeout, ConnectionResetError):
            pass
        return received


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def headers_of(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {line.partition(":")[0].strip().lower(): line.partition(":")[2].strip() for line in head}


def btc_price(db):
    return db.execute("SELECT current_price FROM public.positions WHERE asset = 'BTCUSDT'").fetchone()[0]


def test_a_body_over_the_limit_is_refused_before_it_is_read(server, db):
    """Content-Length announces 50 MB; only the headers are sent. The 413 comes back at once: the
    server did not wait for (nor read) the body."""
    head = (f"POST /api/v1/prices HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {50 * 2**20}\r\n\r\n").encode()
    closed: list = []
    raw = raw_request(server.port, head, b'{"BTCUSDT": "1"', read_timeout=10, closed=closed)
    assert status_of(raw) == 413
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error_code"] == "payload_too_large"
    assert closed == [True]   # closed after the answer: the rest of the body is never read
    # chunked (no length announced): cut after one byte more than the limit
    big = json.dumps({f"X{i}USDT": "1" for i in range(MAX_BODY)}).encode()
    response = requests.post(server.url + "/api/v1/prices", data=iter([big[:1000], big[1000:]]),
                             headers={"X-API-Key": API_KEY, "Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413
    assert btc_price(db) is None
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("body, content_type, status, code", [
    (b'{"BTCUSDT": "5', "application/json", 400, "invalid_parameter"),
    (b"\xff\xfe{}", "application/json", 400, "invalid_parameter"),
    (b"[" * 2000 + b"]" * 2000, "application/json", 400, "invalid_parameter"),   # nesting beyond the parser
    (b'{"BTCUSDT": "51000"}', "text/plain", 415, "unsupported_media_type"),
    (b"BTCUSDT=51000", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b'{"BTCUSDT": "51000"}', "application/xml", 415, "unsupported_media_type"),
    (b'"just a string"', "application/json", 400, "invalid_parameter"),
    (b'{"BTCUSDT": "NaN"}', "application/json", 400, "invalid_parameter"),
    (b'{"BTCUSDT": 1e999999}', "application/json", 400, "invalid_parameter"),
])
def test_bad_bodies_get_a_clear_4xx(server, db, body, content_type, status, code):
    response = requests.post(server.url + "/api/v1/prices", data=body, timeout=10,
                             headers={"X-API-Key": API_KEY, "Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["error_code"] == code
    assert btc_price(db) is None


def test_huge_many_or_repeated_query_parameters(server):
    url, headers = server.url + "/api/v1/positions", {"X-API-Key": API_KEY}
    repeated = requests.get(url + "?status=open&status=closed", headers=headers, timeout=10)
    assert repeated.status_code == 400 and "given more than once" in repeated.json()["message"]
    many = requests.get(url + "?" + "&".join(f"p{i}=1" for i in range(300)), headers=headers, timeout=10)
    assert many.status_code == 400 and "unknown parameter" in many.json()["message"]
    huge_value = requests.get(url, params={"asset": "A" * 3000}, headers=headers, timeout=10)
    assert huge_value.status_code == 400
    # beyond gunicorn's request-line limit: refused by the server itself, which goes on serving
    too_long = requests.get(url, params={"asset": "A" * 20000}, headers=headers, timeout=10)
    assert too_long.status_code in (400, 414)
    numbers = requests.get(url, params={"limit": "9" * 5000}, headers=headers, timeout=10)
    assert numbers.status_code in (400, 414)
    assert requests.get(url, headers=headers, timeout=10).status_code == 200


@pytest.mark.parametrize("trace", [
    b"abc\rSet-Cookie: injected=1",
    b"abc Set-Cookie: injected=1",
    b"x" * 300,
    "caf\u00e9".encode("latin-1"),
    b"<script>alert(1)</script>",
])
def test_an_unfit_trace_id_is_replaced_not_echoed(server, trace):
    head = (b"GET /api/v1/positions/BTCUSDT HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode()
            + b"\r\nX-Trace-Id: " + trace + b"\r\nConnection: close\r\n\r\n")
    raw = raw_request(server.port, head)
    status = status_of(raw)
    headers = headers_of(raw)
    assert "set-cookie" not in headers
    if status == 200:   # gunicorn let the header through: the app replaced it
        assert headers["x-trace-id"] != trace.decode("latin-1") and len(headers["x-trace-id"]) == 32
    else:               # gunicorn refused the malformed header itself
        assert status == 400
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("path, statuses", [
    ("/api/v1/positions/..%2F..%2Fetc%2Fpasswd", {400, 404}),
    ("/api/v1/positions/%2e%2e", {400, 404}),
    ("/api/v1/positions/BTCUSDT%2Fvalidate", {400, 404, 405}),   # WSGI decodes %2F: the GET-less route
    ("/api/v1/positions/BTC%00USDT", {400}),
    ("/api/v1/positions/BTC%0d%0aX-Injected:%201", {400}),
    ("/api/v1/positions/%EF%BC%A2TCUSDT", {400}),          # a full-width B
    ("/api/v1/positions/BTCUSDT%27%20OR%201=1--", {400}),
    ("/api/v1/positions/" + "A" * 500, {400}),
    ("/api/v1/positions//BTCUSDT", {400, 404}),
    ("/api/v1/positions/btcusdt", {200}),                  # case-insensitive, the one real position
])
def test_path_tricks_in_asset(server, path, statuses):
    raw = raw_request(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                                   "Connection: close\r\n\r\n".encode())
    status = status_of(raw)
    assert status in statuses, raw[:400]
    assert "x-injected" not in headers_of(raw)
    if status == 200:
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["asset"] == "BTCUSDT"


def test_slow_clients_do_not_starve_the_others(start_server, settings, db):
    """Twice as many slow clients as the server has threads, each dribbling its request headers one
    line a second: each is cut off at the request deadline (app/api/gunicorn_worker.py), its thread
    freed, and the other clients are served."""
    fill(db, "BTCUSDT", "Buy", "1", "50000")
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="1", POSITION_MANAGER_API_THREADS="2"))
    stop = threading.Event()
    slow: list[socket.socket] = []

    def dribble(sock: socket.socket) -> None:
        try:
            sock.sendall(b"GET /api/v1/positions/BTCUSDT HTTP/1.1\r\nHost: x\r\n")
            while not stop.wait(1.0):
                sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass

    try:
        for _ in range(4):   # twice the threads
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            slow.append(sock)
            threading.Thread(target=dribble, args=(sock,), daemon=True).start()
        time.sleep(1.5)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: requests.get(server.url + "/api/v1/positions/BTCUSDT",
                                                           headers={"X-API-Key": API_KEY}, timeout=60).status_code,
                                    range(8)))
        assert answers == [200] * 8
        # the slow ones were cut off, not answered as if their requests were complete
        for sock in slow:
            sock.settimeout(10)
            try:
                assert not sock.recv(1024).startswith(b"HTTP/1.1 200")
            except OSError:
                pass
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_streams_per_key_are_capped_and_other_keys_still_get_one(start_server, settings, db, stored_key):
    other = stored_key("dashboard", "read")
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="2", POSITION_MANAGER_API_THREADS="4",
                                         POSITION_MANAGER_STREAM_MAX_PER_KEY="2",
                                         POSITION_MANAGER_STREAM_HEARTBEAT="1",
                                         POSITION_MANAGER_STREAM_MAX_SECONDS="60"))
    url = server.url + "/api/v1/stream"
    opened: list[SseClient] = []
    try:
        for _ in range(2):
            stream = SseClient(url, {"X-API-Key": API_KEY})
            opened.append(stream)
            assert stream.response.status_code == 200
        refused = requests.get(url, headers={"X-API-Key": API_KEY}, timeout=10)
        assert refused.status_code == 429 and refused.json()["error_code"] == "too_many_streams"
        assert "Retry-After" in refused.headers
        theirs = SseClient(url, {"X-API-Key": other})
        opened.append(theirs)
        assert theirs.response.status_code == 200
        assert theirs.next("event")["event"] == "initial_data"
        fill(db, "BTCUSDT", "Buy", "1", "50100")
        assert json.loads(theirs.next("event")["data"])["asset"] == "BTCUSDT"
        # a stream given back frees its slot (the slot is held by the stream's own connection)
        opened[0].close()
        deadline = time.monotonic() + 20
        while True:
            again = SseClient(url, {"X-API-Key": API_KEY})
            if again.response.status_code == 200:
                opened.append(again)
                break
            again.close()
            assert time.monotonic() < deadline, "the slot of a closed stream was not freed"
            time.sleep(0.5)
    finally:
        for stream in opened:
            stream.close()
