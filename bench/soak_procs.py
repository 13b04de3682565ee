"""What the soak starts and kills: a PRIVATE PostgreSQL and a PRIVATE RabbitMQ node (the helpers
of tests/pipeline/servers.py: temporary directories, free ports, own node name), the real API
(bin/serve, gunicorn) and the real consumers + relay (bin/consume, one supervisor), each in a
process group of its own so that everything can be stopped, also on failure or Ctrl-C.

The shared servers (127.0.0.1:5432, :5672) are never touched: every address here is a private one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pipeline.servers import PG_BIN, PrivatePostgres, PrivateRabbit, free_port, port_open  # noqa: E402

__all__ = ["PG_BIN", "SoakPostgres", "PrivateRabbit", "Service", "children_of", "free_port", "port_open"]


class SoakPostgres(PrivatePostgres):
    """The private PostgreSQL, plus the stop modes the fault schedule uses."""

    def stop_mode(self, mode: str) -> None:
        """pg_ctl stop -m fast|immediate (immediate: no shutdown checkpoint, crash recovery at start)."""
        self._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", mode, "-w", "-t", "60", "stop")


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                out.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return out


class Service:
    """One of our processes (bin/serve or bin/consume) in its own session / process group, with
    its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "wb")      # one run per log file
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self, contains: str = "") -> list[int]:
        if not self.alive():
            return []
        return [pid for pid, cmd in children_of(self.pid) if contains in cmd]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the leader (the supervisor / gunicorn master stops its children cleanly:
        batches finish), then SIGKILL of the whole group after `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # anything left in the group (orphaned children)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """The environment of our processes: nothing of the caller's service configuration (which may
    point at the shared servers), only what the soak sets."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSITION_MANAGER_", "POSTGRES_", "RABBITMQ_", "PG"))}
    env.update(overrides)
    env["PYTHONPATH"] = str(ROOT)
    return env


def wait_http(url: str, timeout: float, proc: Service) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.tail()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s:\n{proc.tail()}")
