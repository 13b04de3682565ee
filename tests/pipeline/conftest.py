"""Fixtures of the pipeline tests: a private RabbitMQ vhost per test session (rabbitmqctl; queue
names are also unique per test), real consumer/relay processes (`python -m consumers ROLE`)
against the test's own database, and helpers to publish, read queues and wait."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pika
import psycopg
import pytest

from app import settings as settings_mod
from tests.conftest import base_environ

ROOT = Path(__file__).resolve().parents[2]
RABBIT_HOST = os.environ.get("PM_TEST_RABBITMQ_HOST", "127.0.0.1")
RABBIT_PORT = int(os.environ.get("PM_TEST_RABBITMQ_PORT", "5672"))


def _rabbitmqctl(*args: str) -> bool:
    if not shutil.which("rabbitmqctl"):
        return False
    try:
        return subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def mq_vhost():
    """A vhost of our own, deleted at the end; "/" when rabbitmqctl cannot be used (queue names
    are unique per test anyway, and every test deletes its queues)."""
    name = f"pmtest-pipeline-{os.getpid()}"
    if _rabbitmqctl("add_vhost", name) and _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*"):
        yield name
        _rabbitmqctl("delete_vhost", name)
    else:
        yield "/"


def queue_counts(vhost: str, queue: str, node: str | None = None) -> dict:
    """{"messages": ready + unacknowledged, "messages_unacknowledged": n} from rabbitmqctl."""
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), "list_queues", "-p", vhost,
           "name", "messages", "messages_unacknowledged", "--formatter", "json", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    for row in json.loads(out or "[]"):
        if row["name"] == queue:
            return row
    return {}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


class Pipeline:
    """One test's queues, processes and connections."""

    def __init__(self, settings: settings_mod.Settings, vhost: str, tmp_path: Path,
                 rabbit_port: int = RABBIT_PORT) -> None:
        tag = uuid.uuid4().hex[:8]
        self.queues = {
            "POSITION_MANAGER_ORDER_QUEUE": f"t{tag}.order_executed",
            "POSITION_MANAGER_POSITION_QUEUE": f"t{tag}.position",
            "POSITION_MANAGER_DEAD_LETTER_QUEUE": f"t{tag}.dead_letter",
            "POSITION_MANAGER_POSITION_UPDATED_QUEUE": f"t{tag}.position_updated",
            "POSITION_MANAGER_PORTFOLIO_UPDATED_QUEUE": f"t{tag}.portfolio_updated",
            "POSITION_MANAGER_SNAPSHOT_CREATED_QUEUE": f"t{tag}.position_snapshot_created",
        }
        self.env = base_environ(
            POSTGRES_DB=settings.postgres_db, POSTGRES_HOST=settings.postgres_host,
            POSTGRES_PORT=str(settings.postgres_port), RABBITMQ_HOST=RABBIT_HOST,
            RABBITMQ_PORT=str(rabbit_port), RABBITMQ_VHOST=vhost, POSITION_MANAGER_LOG_LEVEL="INFO",
            POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL="0.5", POSITION_MANAGER_EVENTS_EXCHANGE=f"t{tag}.events",
            **self.queues)
        self.settings = settings_mod.load(self.env)
        self.tmp_path = tmp_path
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        self._mq: pika.BlockingConnection | None = None
        self._db: psycopg.Connection | None = None

    # ---- processes -------------------------------------------------------------------------

    def start(self, role: str, **extra_env: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POSITION_MANAGER_", "POSTGRES_", "RABBITMQ_"))}
        env.update(self.env)
        env.update(extra_env)
        env["PYTHONPATH"] = str(ROOT)
        log_path = self.tmp_path / f"{role}-{len(self.processes)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "consumers", role], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
        self.processes.append((proc, log_path))
        return proc

    def log_records(self, proc: subprocess.Popen | None = None) -> list[dict]:
        records = []
        for p, path in self.processes:
            if proc is not None and p is not proc:
                continue
            for line in path.read_text(errors="replace").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    records.append({"raw": line})
        return records

    def stop(self, proc: subprocess.Popen, timeout: float = 20.0) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"process {proc.args} ignored SIGTERM for {timeout}s")

    def close(self) -> None:
        # shown by pytest only when the test failed (captured output)
        for proc, path in self.processes:
            print(f"---- {' '.join(map(str, proc.args[-2:]))} (exit {proc.poll()}): {path}")
            print("\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        for proc, _ in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            channel = self.mq.channel()
            for queue in self.queues.values():
                channel.queue_delete(queue)
            channel.exchange_delete(self.settings.events_exchange)
            self._mq.close()
        except Exception:  # noqa: BLE001 - best effort: the vhost is deleted at session end
            pass
        if self._db is not None:
            self._db.close()

    # ---- broker ----------------------------------------------------------------------------

    def connection(self) -> pika.BlockingConnection:
        """A new connection to this pipeline's vhost (the caller closes it)."""
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=RABBIT_HOST, port=self.settings.rabbitmq_port, virtual_host=self.settings.rabbitmq_vhost,
            credentials=pika.PlainCredentials("guest", "guest")))

    @property
    def mq(self) -> pika.BlockingConnection:
        if self._mq is None or not self._mq.is_open:
            self._mq = self.connection()
        return self._mq

    def declare(self, queue: str) -> None:
        """Declare a queue the way the service does (the position queue with ws-gateway's arguments)."""
        from app import broker
        self.mq.channel().queue_declare(queue, durable=True, arguments=broker.queue_arguments(self.settings, queue))

    def publish(self, queue: str, body: Any, message_id: str | None = None, headers: dict | None = None) -> None:
        """As the real producers do: default exchange, routing key = queue name, persistent."""
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.declare(queue)
        channel = self.mq.channel()
        channel.basic_publish("", queue, body, pika.BasicProperties(
            delivery_mode=2, content_type="application/json", message_id=message_id, headers=headers))
        channel.close()

    def publish_many(self, queue: str, bodies) -> None:
        self.declare(queue)
        channel = self.mq.channel()
        for body in bodies:
            channel.basic_publish("", queue, json.dumps(body).encode(), pika.BasicProperties(
                delivery_mode=2, content_type="application/json"))
        channel.close()

    def drain(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        """Every message now in the queue (acknowledged, i.e. removed)."""
        self.declare(queue)
        channel = self.mq.channel()
        out = []
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append((props, body))
        channel.close()
        return out

    def depth(self, queue: str) -> int:
        self.declare(queue)
        return self.mq.channel().queue_declare(queue, passive=True).method.message_count

    def events(self, queue: str | None = None, expect: int | None = None, timeout: float = 20.0):
        """Drain position_updated (or `queue`) until `expect` messages were read; (props, json) pairs."""
        queue = queue or self.settings.position_updated_queue
        got: list = []

        def enough():
            got.extend((p, json.loads(b)) for p, b in self.drain(queue))
            return len(got) >= (expect or 0)

        if expect:
            wait_for(enough, timeout, what=f"{expect} messages on {queue}")
            time.sleep(0.3)  # and no more than that
        enough()
        return got

    # ---- database --------------------------------------------------------------------------

    @property
    def db(self) -> psycopg.Connection:
        if self._db is None or self._db.closed:
            self._db = psycopg.connect(**self.settings.conninfo(), autocommit=True)
        return self._db

    def one(self, sql: str, *params) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def position(self, asset: str, mode: str = "one-way") -> dict | None:
        return self.one("SELECT pm.get_position(%s, %s)", asset, mode)

    def ledger_count(self) -> int:
        return self.one("SELECT count(*) FROM pm.executions WHERE kind = 'trade'")


@pytest.fixture
def pipe(settings, mq_vhost, tmp_path):
    p = Pipeline(settings, mq_vhost, tmp_path)
    yield p
    p.close()
