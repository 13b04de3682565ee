"""bin/scheduler: run the cron-style jobs at their intervals, for hosts without cron (the
docker-compose `scheduler` service). Each run is the job's own bin/ script in a child process,
exactly what cron would run; overlapping runs are impossible by construction here and harmless
anyway (each job takes its advisory lock).

Intervals: refresh-prices every POSITION_MANAGER_PRICE_STALENESS_THRESHOLD / 2 seconds (at least
30 s), snapshot every POSITION_MANAGER_SNAPSHOT_INTERVAL, validate-positions every
POSITION_MANAGER_VALIDATION_INTERVAL, cleanup-snapshots daily. SIGTERM/SIGINT stop it between runs
(a running job is given its own SIGTERM)."""
from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from app import logs
from app.settings import Settings, entry_point, load

BIN = Path(__file__).resolve().parent.parent / "bin"
log = logging.getLogger("position_manager.scheduler")

# (job, interval in seconds from the settings, delay of the first run: staggered so that a fresh
# start does not run everything at the same second)
SCHEDULE: list[tuple[str, Callable[[Settings], int], int]] = [
    ("refresh-prices", lambda s: max(30, s.price_staleness_threshold // 2), 0),
    ("snapshot", lambda s: s.snapshot_interval, 10),
    ("validate-positions", lambda s: s.validation_interval, 20),
    ("cleanup-snapshots", lambda s: 86400, 30),
]


class Scheduler:
    def __init__(self, settings: Settings, jobs: list[str], stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.plan = [(job, interval(settings), first) for job, interval, first in SCHEDULE if job in jobs]
        self.current: subprocess.Popen | None = None

    def run_job(self, job: str, timeout: float) -> int:
        started = time.monotonic()
        self.current = subprocess.Popen([str(BIN / job)])
        try:
            code = self.current.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("job overran its interval; stopping it", extra={"job": job, "timeout": timeout})
            self.current.terminate()
            code = self.current.wait()
        finally:
            self.current = None
        level = logging.INFO if code in (0, 75) else logging.WARNING if code == 3 else logging.ERROR
        log.log(level, "job finished", extra={"job": job, "exit_code": code,
                                              "seconds": round(time.monotonic() - started, 3)})
        return code

    def run_once(self) -> dict[str, int]:
        return {job: self.run_job(job, interval) for job, interval, _ in self.plan if not self.stop.is_set()}

    def run_forever(self) -> None:
        now = time.monotonic()
        due = {job: now + first for job, _, first in self.plan}
        intervals = {job: interval for job, interval, _ in self.plan}
        log.info("scheduler started", extra={"intervals": intervals})
        while not self.stop.is_set():
            job = min(due, key=due.get)
            if self.stop.wait(max(0.0, due[job] - time.monotonic())):
                break
            self.run_job(job, intervals[job])
            # the next run is one interval after this one was due (no drift), never in the past
            due[job] = max(due[job] + intervals[job], time.monotonic())
        log.info("scheduler stopped")


@entry_point("bin/scheduler")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/scheduler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="run every job once, in order, and exit")
    parser.add_argument("--only", action="append", choices=[job for job, _, _ in SCHEDULE],
                        help="schedule only this job (repeatable)")
    args = parser.parse_args(argv)
    settings = load()
    logs.setup("position-manager-scheduler", settings.log_level)
    stop = threading.Event()
    scheduler = Scheduler(settings, args.only or [job for job, _, _ in SCHEDULE], stop)

    def on_signal(signum, _frame):
        stop.set()
        if scheduler.current is not None:
            scheduler.current.terminate()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.once:
        codes = scheduler.run_once()
        print("scheduler: " + ", ".join(f"{job} exit {code}" for job, code in codes.items()))
        return 0 if all(code in (0, 3, 75) for code in codes.values()) else 1
    scheduler.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
