"""Private PostgreSQL and RabbitMQ servers for tests that stop them (never the shared ones).

Each lives in its own temporary directory on free ports and is always stopped at teardown.
As root, the servers run as their system users (postgres, rabbitmq), which they insist on.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("PM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RABBIT_BIN = Path(os.environ.get("PM_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _as_user(user: str) -> tuple[list[str], dict]:
    """Command prefix and HOME to run as `user` when we are root; nothing otherwise."""
    if os.geteuid() != 0:
        return [], {}
    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        return [], {}
    return ["runuser", "-u", user, "--"], {"HOME": home}


def _private_dir(prefix: str, owner: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))   # under /tmp: the server user can reach it
    path.chmod(0o755)
    if os.geteuid() == 0:
        try:
            shutil.chown(path, user=owner)
        except (LookupError, PermissionError):
            pass
    return path


class PrivatePostgres:
    def __init__(self) -> None:
        self.prefix, self.env = _as_user("postgres")
        self.dir = _private_dir("pmtest-pg-", "postgres")
        self.port = free_port()
        self._run(PG_BIN / "initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")

    def _run(self, *cmd) -> None:
        subprocess.run([*self.prefix, *map(str, cmd)], check=True, capture_output=True, timeout=120,
                       env={**os.environ, **self.env})

    def start(self) -> None:
        self._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRabbit:
    def __init__(self) -> None:
        self.prefix, home = _as_user("rabbitmq")
        self.dir = _private_dir("pmtest-mq-", "rabbitmq")
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"pmtest-{os.getpid()}-{self.port}@localhost"
        (self.dir / "plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "rabbitmq", str(self.dir)], check=False)
        self.env = {**os.environ, **home,
                    "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "plugins"),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
                    "ERL_EPMD_ADDRESS": "127.0.0.1"}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        self.proc = subprocess.Popen([*self.prefix, str(RABBIT_BIN / "rabbitmq-server")], env=self.env,
                                     stdout=open(self.dir / "server.out", "ab"), stderr=subprocess.STDOUT,
                                     cwd=self.dir)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ did not start: {(self.dir / 'server.out').read_text()[-2000:]}")
            time.sleep(0.3)

    def ctl(self, *args: str) -> str:
        out = subprocess.run([*self.prefix, str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
                             env=self.env, capture_output=True, text=True, timeout=120)
        return out.stdout

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.ctl("stop")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def queue_counts(vhost: str, queue: str, node: str | None = None) -> dict:
    """{"messages": ready + unacknowledged, "messages_unacknowledged": n} from rabbitmqctl."""
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), "list_queues", "-p", vhost,
           "name", "messages", "messages_unacknowledged", "--formatter", "json", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    for row in json.loads(out or "[]"):
        if row["name"] == queue:
            return row
    return {}
