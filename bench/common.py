"""What every benchmark needs, once: databases of its own (migrated by bin/migrate's code), its
own named statements (bench/queries.sql), free ports, our processes (bin/serve, bin/consume) in
process groups of their own, private PostgreSQL and RabbitMQ servers for runs that break them,
CPU time of processes, percentiles, and the JSON result file every benchmark writes.

Tests may import this module (the private servers, the process helpers); nothing here imports
tests. The shared servers (POSTGRES_* / RABBITMQ_* of the environment) are used only for
databases and queues that a benchmark creates and drops itself; a private server is only ever
one of the classes below, in a temporary directory on free ports.
"""
from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # a benchmark started as `python bench/x.py`
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import requests  # noqa: E402
from psycopg import sql  # noqa: E402

from app import db as appdb  # noqa: E402
from app.settings import Settings  # noqa: E402
from jobs import migrate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "bench" / "out"           # logs and scratch files of runs (not committed)
QUERIES_FILE = ROOT / "bench" / "queries.sql"
PG_BIN = Path(os.environ.get("PM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RABBIT_BIN = Path(os.environ.get("PM_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
QUEUE_VARIABLES = ("ORDER_QUEUE", "POSITION_QUEUE", "DEAD_LETTER_QUEUE", "POSITION_UPDATED_QUEUE",
                   "PORTFOLIO_UPDATED_QUEUE", "SNAPSHOT_CREATED_QUEUE")


# ------------------------------------------------------------------------------------------------
# Statements and databases
# ------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def queries() -> dict[str, str]:
    """The benchmarks' own named statements (bench/queries.sql), read like app/queries.sql."""
    return appdb.load_queries(QUERIES_FILE)


def q(name: str) -> str:
    """A statement of bench/queries.sql; the service's own ones stay in app/queries.sql (appdb.q)."""
    return queries()[name]


def drop_database(settings: Settings, name: str) -> None:
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_database(settings: Settings, name: str) -> Settings:
    """An empty database `name` (dropped first when it exists); returns `settings` pointing at it."""
    drop_database(settings, name)
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return settings.with_overrides(postgres_db=name)


def fresh_database(settings: Settings, name: str) -> Settings:
    """Database `name` created anew and migrated by bin/migrate's code (jobs.migrate.apply);
    returns `settings` pointing at it."""
    target = create_database(settings, name)
    migrate.apply(target)
    return target


# ------------------------------------------------------------------------------------------------
# Ports, environments, processes
# ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def queue_names(prefix: str) -> dict[str, str]:
    """POSITION_MANAGER_*_QUEUE variables naming queues of one run, `<prefix>.<queue>`, and its own
    events exchange, `<prefix>.events` (so that runs sharing a broker never receive each other's
    events); delete_queues removes both."""
    names = {f"POSITION_MANAGER_{v}": f"{prefix}.{v.lower()}" for v in QUEUE_VARIABLES}
    names["POSITION_MANAGER_EVENTS_EXCHANGE"] = f"{prefix}.events"
    return names


def service_env(settings: Settings, *, clean: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a process of ours (bin/serve, bin/consume, a job) pointed at the database
    and broker of `settings`. The caller's environment is kept (so POSITION_MANAGER_* tuning given
    to the benchmark reaches the service), unless `clean`: then nothing of the caller's service
    configuration is (it may point at the shared servers), only what is set here."""
    keep = os.environ.items()
    if clean:
        keep = [(k, v) for k, v in keep if not k.startswith(("POSITION_MANAGER_", "POSTGRES_", "RABBITMQ_", "PG"))]
    env = dict(keep)
    env.update(POSTGRES_HOST=settings.postgres_host, POSTGRES_PORT=str(settings.postgres_port),
               POSTGRES_USER=settings.postgres_user, POSTGRES_DB=settings.postgres_db,
               POSTGRES_PASSWORD=settings.postgres_password or "",
               RABBITMQ_HOST=settings.rabbitmq_host, RABBITMQ_PORT=str(settings.rabbitmq_port),
               RABBITMQ_VHOST=settings.rabbitmq_vhost, RABBITMQ_USER=settings.rabbitmq_user,
               RABBITMQ_PASSWORD=settings.rabbitmq_password,
               PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of `pid`, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                out.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return out


class Service:
    """One of our processes (bin/serve, bin/consume, `python -m consumers ROLE`) in a session and
    process group of its own, its output in a log file; stop() ends the whole group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Service":
        with open(self.log_path, "wb") as log:      # one run per log file
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

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
        """SIGTERM to the leader (the supervisor or the gunicorn master stops its children cleanly:
        batches finish), then SIGKILL of whatever is left in the group after `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
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


def stop_all(services: Iterable[Service | None]) -> None:
    for service in services:
        if service is not None:
            service.stop()


def wait_http(url: str, timeout: float, service: Service) -> None:
    """Poll `url` until it answers 200; fail with the service's last log lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited at start:\n{service.tail()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{service.name} did not answer {url} within {timeout:.0f}s:\n{service.tail()}")


def start_api(env: dict[str, str], log_dir: Path, *, name: str = "api", port: int | None = None,
              timeout: float = 60.0) -> tuple[Service, str]:
    """bin/serve (gunicorn) on 127.0.0.1 and a free port, polled until /health answers; returns the
    service and its base URL."""
    port = port or free_port()
    service = Service(name, [str(ROOT / "bin" / "serve"), "--bind", f"127.0.0.1:{port}"], env, log_dir).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout, service)
    except RuntimeError:
        service.stop()
        raise
    return service, url


def start_consumers(env: dict[str, str], log_dir: Path, role: str | None = None, *, name: str | None = None) -> Service:
    """bin/consume: without a role the supervisor (order and position consumers and the relay, one
    process each); with one, that role alone in the foreground (its pid is the role's process)."""
    return Service(name or role or "consume", [str(ROOT / "bin" / "consume"), *([role] if role else [])],
                   env, log_dir).start()


def mq_connect(settings: Settings, name: str):
    """A blocking pika connection to the broker of `settings` (the service's own parameters)."""
    from app import broker
    return broker.connect(settings, name)


def delete_queues(settings: Settings, names: Iterable[str]) -> None:
    """Delete the named queues, and the run's events exchange (settings.events_exchange)."""
    conn = mq_connect(settings, "bench-cleanup")
    try:
        for name in names:
            conn.channel().queue_delete(name)
        conn.channel().exchange_delete(settings.events_exchange)
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------
# Private servers (never the shared ones): temporary directories, free ports, own node names.
# As root, the servers run as their system users (postgres, rabbitmq), which they insist on.
# ------------------------------------------------------------------------------------------------

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
    """initdb in a temporary directory; start() on a free port (fsync off); destroy() removes it."""

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

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m fast|immediate (immediate: no shutdown checkpoint, crash recovery at start)."""
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run(PG_BIN / "pg_ctl", "-D", self.dir / "data", "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRabbit:
    """A RabbitMQ node of its own (node name, ports, mnesia, config) in a temporary directory."""

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
        with open(self.dir / "server.out", "ab") as out:
            self.proc = subprocess.Popen([*self.prefix, str(RABBIT_BIN / "rabbitmq-server")], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
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


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a local process (/proc); None when it is gone or not local."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def percentiles(samples: list[float]) -> dict[str, float]:
    """n, p50, p95, p99 and max of `samples` (nearest rank); zeros when there are none."""
    if not samples:
        return {"n": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(samples)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


# ------------------------------------------------------------------------------------------------
# The result file: bench/results/<benchmark>.json, read by bench/report and bench/docs_gen.py
# ------------------------------------------------------------------------------------------------

def figure(key: str, label: str, value: float | None, unit: str, *, reference: dict | None = None,
           **extra: Any) -> dict:
    """One figure of a result. `reference`: the figure it is to be read against, measured in the
    same run (reference(...)); None where there is none."""
    return {"key": key, "label": label, "value": value, "unit": unit, "reference": reference, **extra}


def reference(label: str, value: float | None, unit: str) -> dict:
    return {"label": label, "value": value, "unit": unit}


def explicit_command(script: str, parser, args) -> str:
    """The command that repeats this run: `bench/run NAME` with every option spelled out, so that a
    later change of a default does not change what the recorded command means."""
    parts = ["bench/run", script]
    for action in parser._actions:                       # argparse keeps no public list of them
        if not action.option_strings or action.dest in ("help", "json"):
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[-1]
        if action.nargs == 0:                            # store_true / store_false
            if value != action.default:
                parts.append(flag)
        elif value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


def write_result(name: str, *, command: str, params: dict, figures: list[dict], detail: Any = None,
                 passed: bool | None = None, path: Path | str | None = None) -> Path:
    """Write the result of one benchmark run: the command that reproduces it, its parameters, the
    machine (cores, load average at the end), the figures each with its same-run reference, and
    `detail` (raw series for the plots). Default path bench/results/<name>.json."""
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in params.items() if k != "json"}
    record = {"benchmark": name, "command": command, "params": params,
              "machine": machine(),
              "code": code_revision(), "passed": passed, "figures": figures, "detail": detail}
    target.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return target


def machine() -> dict:
    """What the figures were measured on: cores, load average at the end, the CPU's model and a
    single-core speed (nanoseconds per iteration of a fixed Python loop, the best of three). A
    ratio whose two sides use different resources (a CPU-bound function against pgbench, which
    mostly waits for round trips and the disk) moves from one machine to another with the balance
    of the two; these say which kind of machine a run had."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    best = min(timeit.repeat("for i in range(1_000_000): total += i", "total = 0", number=1, repeat=3))
    return {"cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "cpu": model, "python_loop_ns": round(best * 1e3, 1)}


def code_revision() -> str | None:
    """The commit measured (with `+changes` when the work tree differs from it), or None."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+changes" if dirty else "")) or None


def add_json_option(parser, name: str) -> None:
    parser.add_argument("--json", metavar="FILE", default=None,
                        help=f"where to write the result (default bench/results/{name}.json)")
