"""`python -m consumers [order|position|relay|all]` (bin/consume).

`all` (the default) supervises one process per role: the order-queue consumer, the
position-queue consumer and the outbox relay. Separate processes, so that a 2-core machine runs
the Python work of each beside the others (no GIL sharing), and a crash of one is contained: it
is restarted with backoff. SIGTERM/SIGINT are passed on to every child, which finishes its batch
(commit, ack) and closes; the supervisor exits when all have.
"""
from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time

from app import logs
from app.settings import EXIT_CONFIG, ROLES, entry_point, load

STOP_GRACE_SECONDS = 30.0

log = logging.getLogger("position_manager.consume")


def run_role(role: str) -> int:
    settings = load()
    logs.setup(f"{settings.service_name}-{role}", settings.log_level)
    if role == "relay":
        from consumers import relay
        relay.run(settings)
    else:
        from consumers import consumer
        consumer.run(settings, role)
    return 0


class Supervisor:
    def __init__(self, roles: tuple[str, ...]) -> None:
        self.roles = roles
        self.children: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {role: 0 for role in roles}
        self.not_before: dict[str, float] = {role: 0.0 for role in roles}
        self.stopping = False

    def stop(self, *_args) -> None:
        self.stopping = True

    def _start(self, role: str) -> None:
        self.children[role] = subprocess.Popen([sys.executable, "-m", "consumers", role])
        log.info("started", extra={"role": role, "pid": self.children[role].pid})

    def run(self) -> int:
        for role in self.roles:
            self._start(role)
        exit_code = 0
        while not self.stopping:
            time.sleep(0.2)
            if self.stopping:
                break   # a signal to the whole process group also ended the children: not a crash
            for role, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                if code == EXIT_CONFIG:
                    log.error("configuration error in a child, stopping", extra={"role": role})
                    self.stopping, exit_code = True, EXIT_CONFIG
                    break
                self.restarts[role] += 1
                delay = min(30.0, 0.5 * 2 ** min(self.restarts[role], 6))
                log.error("child exited, restarting", extra={"role": role, "exit_code": code,
                                                             "retry_in_seconds": delay})
                del self.children[role]
                self.not_before[role] = time.monotonic() + delay
            for role in self.roles:
                if role not in self.children and not self.stopping and time.monotonic() >= self.not_before[role]:
                    self._start(role)
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for role, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("child did not stop in time, killing it", extra={"role": role, "pid": child.pid})
                child.kill()
                child.wait()
        log.info("all stopped")
        return exit_code


@entry_point("bin/consume")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/consume", description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="all", choices=(*ROLES, "all"),
                        help="run one role in this process, or supervise all three (default)")
    args = parser.parse_args(argv)
    settings = load()
    if args.role != "all":
        return run_role(args.role)
    logs.setup(f"{settings.service_name}-consume", settings.log_level)
    supervisor = Supervisor(ROLES)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
