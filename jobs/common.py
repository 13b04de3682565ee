"""What every cron-style job of bin/ shares: settings, JSON logs, one database connection holding
the job's advisory lock, exit codes, and the one-line summary on stdout.

Exit codes (documented in the README, "Operations"):
  0   success
  1   failure: database unreachable, SQL error, price API down, ... (one clear line on stderr)
  2   configuration or usage error (the message names the variable / option)
  3   the job ran but found something an operator should look at
      (validate-positions: discrepancies; refresh-prices: symbols Bybit did not list)
  75  skipped: another run of the same job holds its lock (EX_TEMPFAIL; nothing was done)
"""
from __future__ import annotations

import argparse
import logging
import sys
import uuid
from dataclasses import dataclass
from typing import Callable

import psycopg

from app import logs, sqlstates
from app.db import connect, q
from app.settings import ConfigError, Settings, config_error, load

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_ATTENTION = 3
EXIT_LOCKED = 75

# pg_try_advisory_lock keys, one per job: two runs of the same job exclude each other, different
# jobs do not. The high part spells "pm" so that they do not collide with other users' keys.
_PM = 0x706D_0000
LOCK_KEYS = {
    "snapshot": _PM + 1,
    "cleanup-snapshots": _PM + 2,
    "validate-positions": _PM + 3,
    "refresh-prices": _PM + 4,
}


class JobFailure(Exception):
    """The job could not do its work; the message says why (printed, exit 1)."""


@dataclass
class JobContext:
    name: str
    settings: Settings
    conn: psycopg.Connection
    trace_id: str
    log: logging.Logger


def database_failure(exc: psycopg.Error, settings: Settings, log: logging.Logger | None = None) -> str:
    """One line saying what went wrong with the database (logged too when a log is given): an
    unreachable database names where it was looked for, any other error its SQLSTATE."""
    where = f"{settings.postgres_host}:{settings.postgres_port}/{settings.postgres_db}"
    text = " ".join(str(exc).split())  # one line, whatever libpq put in it
    if sqlstates.classify(exc) is sqlstates.UNAVAILABLE:
        if log is not None:
            log.error("database unreachable", extra={"error": text, "database": where})
        return f"database unreachable at {where}: {text}"
    if log is not None:
        log.error("database error", extra={"error": text, "sqlstate": exc.sqlstate, "database": where})
    return f"database error (SQLSTATE {exc.sqlstate}) on {where}: {text}"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"bin/{name}", description=description,
        epilog="Exit codes: 0 ok, 1 failure, 2 configuration error, 3 attention needed (see README), "
               "75 skipped because another run holds the lock.")


def run(name: str, args: argparse.Namespace, body: Callable[[JobContext, argparse.Namespace], int],
        environ=None) -> int:
    """Load settings, connect, take the job's lock, run body(ctx, args); map failures to exit codes."""
    try:
        settings = load(environ)
    except ConfigError as exc:
        return config_error(f"bin/{name}", exc)
    logs.setup(f"position-manager-{name}", settings.log_level)
    log = logging.getLogger(f"position_manager.jobs.{name}")
    trace_id = f"{name}-{uuid.uuid4().hex[:16]}"
    logs.trace_id_var.set(trace_id)
    try:
        # autocommit: every SQL call is its own transaction (cleanup commits per batch); the
        # session-level advisory lock survives those commits and dies with the connection.
        with connect(settings, autocommit=True) as conn:
            locked = conn.execute(q("job_try_lock"), {"key": LOCK_KEYS[name]}).fetchone()[0]
            if not locked:
                log.warning("another run holds the lock; skipping")
                print(f"{name}: skipped: another run holds the lock")
                return EXIT_LOCKED
            ctx = JobContext(name, settings, conn, trace_id, log)
            return body(ctx, args)
    except JobFailure as exc:
        log.error("job failed", extra={"error": str(exc)})
        print(f"bin/{name}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except psycopg.Error as exc:
        print(f"bin/{name}: failed: {database_failure(exc, settings, log)}", file=sys.stderr)
        return sqlstates.classify(exc).job_exit
    except Exception as exc:  # a bug, not an operational failure: still one clear line and exit 1
        log.exception("unexpected error")
        print(f"bin/{name}: failed: unexpected {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
