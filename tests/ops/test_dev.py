"""bin/dev, the README's run command: started as a subprocess the way a newcomer runs it, it serves
the API (with the demo data when asked), degrades without RabbitMQ, starts a private PostgreSQL
when none answers, and Ctrl-C (SIGINT) stops every process it started."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import base_environ
from bench.common import free_port

ROOT = Path(__file__).resolve().parents[2]
OWN_KEY = "a-key-of-my-own-Vt5Qw8Jz3Hn6"   # the API refuses short or placeholder keys
QUEUE_SETTINGS = ["POSITION_MANAGER_ORDER_QUEUE", "POSITION_MANAGER_POSITION_QUEUE",
                  "POSITION_MANAGER_DEAD_LETTER_QUEUE", "POSITION_MANAGER_POSITION_UPDATED_QUEUE",
                  "POSITION_MANAGER_PORTFOLIO_UPDATED_QUEUE", "POSITION_MANAGER_SNAPSHOT_CREATED_QUEUE"]


class DevRun:
    """bin/dev as a child process, its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("POSTGRES_", "POSITION_MANAGER_", "RABBITMQ_", "PM_"))}
        full.update(env)
        self.port = int(env["POSITION_MANAGER_PORT"])
        self.lines: list[str] = []
        self.proc = subprocess.Popen([str(ROOT / "bin" / "dev"), *args], env=full, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.descendants: dict[int, psutil.Process] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            assert self.proc.poll() is None, f"bin/dev exited ({self.proc.returncode}):\n{self.output()}"
            self.remember_descendants()
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.output()}")

    def remember_descendants(self) -> None:
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def get(self, path: str, key: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"X-API-Key": key} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def alive_descendants(self) -> list[psutil.Process]:
        alive = []
        for proc in self.descendants.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        return alive

    def interrupt(self, timeout: float = 60) -> int:
        self.remember_descendants()
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill_leftovers(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for proc in self.alive_descendants():
            proc.kill()


def _delete_queues(env: dict[str, str]) -> None:
    import pika
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    try:
        for name in QUEUE_SETTINGS:
            channel = connection.channel()
            channel.queue_delete(env[name])
        connection.channel().exchange_delete(env["POSITION_MANAGER_EVENTS_EXCHANGE"])
    finally:
        connection.close()


@pytest.fixture
def dev_env(settings):
    prefix = f"pmtest-ops-dev-{os.getpid()}-{time.time_ns() % 10**9}"
    env = base_environ(POSTGRES_DB=settings.postgres_db, POSITION_MANAGER_PORT=str(free_port()),
                       POSITION_MANAGER_API_WORKERS="1", POSITION_MANAGER_API_THREADS="2",
                       PM_START_SERVICES="0", POSITION_MANAGER_LOG_LEVEL="WARNING")
    del env["POSITION_MANAGER_API_KEY"]  # bin/dev makes a development key
    env.update({name: f"{prefix}.{name.lower()}" for name in QUEUE_SETTINGS})
    env["POSITION_MANAGER_EVENTS_EXCHANGE"] = f"{prefix}.events"
    yield env
    _delete_queues(env)


def _assert_demo_visible(run: DevRun, key: str) -> None:
    status, body = run.get("/api/v1/positions?status=open", key)
    assert status == 200, body
    by_asset = {p["asset"]: p for p in body["positions"]}
    # BTCUSDT (two fills) and ETHUSDT (one fill), priced by the exchange's mark price
    assert by_asset["BTCUSDT"]["size"] == "0.4" and by_asset["BTCUSDT"]["current_price"] == "67900.1"
    assert by_asset["ETHUSDT"]["size"] == "-3.5" and by_asset["ETHUSDT"]["side"] == "short"
    status, portfolio = run.get("/api/v1/portfolio", key)
    assert status == 200 and portfolio["open_positions_count"] >= 2
    assert float(portfolio["total_exposure_usdt"]) > 0


def test_dev_runs_everything_with_demo_and_ctrl_c_stops_it(dev_env):
    run = DevRun(dev_env, "--demo")
    try:
        key = run.wait_for_line(r"DEVELOPMENT-ONLY key (\S+)").group(1)
        run.wait_for_line(r"consumers and outbox relay started")
        run.wait_for_line(r"^dev: running \(API, consumers, relay\)")
        run.remember_descendants()
        deadline = time.monotonic() + 30   # every consumer role and the relay has written a heartbeat
        while (health := run.get("/health")[1])["status"] != "healthy" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert health["database_connected"] is True and health["queue_connected"] is True
        assert health["status"] == "healthy", health
        assert set(health["consumers"]) == {"order", "position", "relay"}
        _assert_demo_visible(run, key)
        assert run.get("/api/v1/positions")[0] == 401  # the key is really required
        commands = [" ".join(p.cmdline()) for p in run.alive_descendants()]
        assert any("gunicorn" in c for c in commands) and any("consumers" in c for c in commands), commands
        assert run.interrupt() == 130
        deadline = time.monotonic() + 20
        while run.alive_descendants() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.alive_descendants() == [], [p.cmdline() for p in run.alive_descendants()]
        assert "dev: stopping" in run.output()
    finally:
        run.kill_leftovers()


def test_dev_without_rabbitmq_serves_degraded_and_demo_uses_sql(dev_env):
    dev_env["RABBITMQ_PORT"] = str(free_port())
    dev_env["POSITION_MANAGER_API_KEY"] = OWN_KEY
    run = DevRun(dev_env, "--demo")
    try:
        run.wait_for_line(r"RabbitMQ does not answer .*consumers NOT started")
        run.wait_for_line(r"applied directly with SQL")
        run.wait_for_line(r"^dev: running \(API only")
        assert "DEVELOPMENT-ONLY" not in run.output()
        status, health = run.get("/health")
        assert status == 200 and health["status"] == "degraded" and health["queue_connected"] is False
        _assert_demo_visible(run, OWN_KEY)
        assert run.interrupt() == 130
        assert run.alive_descendants() == []
    finally:
        run.kill_leftovers()


def test_dev_refuses_unknown_option():
    result = subprocess.run([str(ROOT / "bin" / "dev"), "--nope"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown option --nope" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("pg_config") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))),
                    reason="no PostgreSQL server binaries installed")
def test_dev_starts_a_private_postgres_when_none_answers(dev_env):
    data_root = Path(tempfile.mkdtemp(prefix="pm-dev-pg-", dir="/tmp"))
    data_root.chmod(0o755)  # the server may run as the postgres system user (initdb refuses root)
    env = {k: v for k, v in dev_env.items() if k != "POSTGRES_HOST"}
    env.update(POSTGRES_PORT=str(free_port()), RABBITMQ_PORT=str(free_port()), POSTGRES_DB="ytrader",
               POSITION_MANAGER_API_KEY=OWN_KEY, PM_DEV_PGDATA=str(data_root / "data"))
    env.pop("POSTGRES_USER", None)
    run = DevRun(env, "--demo")
    try:
        match = run.wait_for_line(r"started a private PostgreSQL on 127\.0\.0\.1:(\d+)", timeout=180)
        run.wait_for_line(r"^dev: running", timeout=180)
        _assert_demo_visible(run, OWN_KEY)
        pid_file = data_root / "data" / "postmaster.pid"
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        assert match.group(1) == pid_file.read_text().splitlines()[3].strip()
        assert run.interrupt() == 130
        postmaster.wait(timeout=30)
        assert not pid_file.exists()
        assert run.alive_descendants() == []
    finally:
        run.kill_leftovers()
        pid_file = data_root / "data" / "postmaster.pid"
        if pid_file.exists():  # bin/dev failed to stop it: immediate shutdown of that server only
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(data_root, ignore_errors=True)
