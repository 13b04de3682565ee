"""Fixtures of the API tests (tests/api/ and tests/api/extras/): the Falcon app on this test's
database, a real gunicorn, and a TCP proxy in front of PostgreSQL that a test can cut to make the
database unreachable. Positions are changed through the SQL core (tests/sql/calls.py)."""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import falcon
import pytest
import requests
from falcon import testing

from app.api import create_app, make_api_pool
from app.api.keys import digest, new_key
from app.db import q
from bench.common import free_port
from tests.conftest import TEST_API_KEY

ROOT = Path(__file__).resolve().parents[2]
API_KEY = TEST_API_KEY


@pytest.fixture
def api_settings(settings):
    """Rate limits high enough never to interfere (the rate-limit tests set their own); a live
    stream sends a heartbeat every second and ends after 3 s; the API alone (no consumer role is
    expected alive: the liveness tests name their roles)."""
    return settings.with_overrides(rate_limit_default=1_000_000, metrics_cache_ttl=60,
                                   stream_heartbeat=1,
                                   stream_max_seconds=3, health_roles=())


@pytest.fixture
def stored_key(db):
    """stored_key(name, scope="admin", rate_limit=None) -> a new key of pm.api_keys (as bin/api-keys makes it)."""

    def _create(name: str, scope: str = "admin", rate_limit: int | None = None) -> str:
        key = new_key()
        db.execute(q("extras_api_key_create"), {"name": name, "key_hash": digest(key), "scope": scope,
                                               "rate_limit": rate_limit})
        return key

    return _create


@pytest.fixture
def make_app():
    """make_app(settings, **create_app_kwargs) -> the Falcon app with its own pool (closed at teardown)."""
    pools = []

    def _make(settings, **kwargs) -> falcon.App:
        pool = make_api_pool(settings)
        pools.append(pool)
        return create_app(pool, settings, **kwargs)

    yield _make
    for pool in pools:
        pool.close()


@pytest.fixture
def make_client(make_app):
    """make_client(settings, key=API_KEY, **create_app_kwargs) -> a TestClient sending that X-API-Key."""

    def _make(settings, key: str = API_KEY, **kwargs) -> testing.TestClient:
        return testing.TestClient(make_app(settings, **kwargs), headers={"X-API-Key": key})

    return _make


@pytest.fixture
def client(make_client, api_settings) -> testing.TestClient:
    return make_client(api_settings)


# ------------------------------------------------------------------ a real gunicorn

class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_environ(settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "POSTGRES_HOST": settings.postgres_host, "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_DB": settings.postgres_db, "POSTGRES_USER": settings.postgres_user,
        "POSTGRES_PASSWORD": settings.postgres_password,
        "POSITION_MANAGER_API_KEY": API_KEY,
        "POSITION_MANAGER_LOG_LEVEL": "INFO",
        "POSITION_MANAGER_HEALTH_ROLES": "",   # the API alone: no consumer role expected alive
    })
    env.update(extra)
    return env


@pytest.fixture
def start_server(tmp_path):
    """start_server(env) -> Server: bin/serve on a free port, polled until /health answers;
    the whole process group is killed at teardown."""
    servers: list[Server] = []

    def _start(env: dict[str, str], *, wait_healthy: bool = True) -> Server:
        port = free_port()
        log_path = tmp_path / f"gunicorn-{port}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([str(ROOT / "bin" / "serve"), "--bind", f"127.0.0.1:{port}"], env=env,
                                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(proc, port, log_path)
        servers.append(server)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"bin/serve exited with {proc.returncode}:\n{server.log()}")
            try:
                response = requests.get(server.url + "/health", timeout=2)
                if response.status_code == 200 or not wait_healthy:
                    return server
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"bin/serve did not answer on {server.url}:\n{server.log()}")
            time.sleep(0.1)

    yield _start
    for server in servers:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGTERM)
            try:
                server.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()


# ------------------------------------------------------------------ a PostgreSQL that can be cut off

class TcpProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL. stop() closes every forwarded connection and refuses
    new ones (accepted and closed at once: the database "goes away"); start() forwards again. The
    listening socket stays open throughout, so that no other process can take the port meanwhile
    (a free port is an ephemeral one: any outgoing connection may be given it)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._forwarding = False

    def start(self) -> None:
        with self._lock:
            self._forwarding = True
            if self._listener is not None:
                return
            listener = self._listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            self._forwarding = False
            for sock in list(self._sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self._listener is not None:
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accepting thread
                except OSError:
                    pass
                self._listener.close()
                self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return                      # closed
            if not self._forwarding:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self._forwarding:
                    client.close()
                    upstream.close()
                    continue
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                for sock in (a, b):
                    self._sockets.discard(sock)
                    sock.close()


@pytest.fixture
def pg_proxy(settings):
    proxy = TcpProxy((settings.postgres_host, settings.postgres_port))
    proxy.start()
    yield proxy
    proxy.close()
