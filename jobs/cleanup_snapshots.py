"""bin/cleanup-snapshots: delete snapshots older than POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS.

Deletes in batches (pm.cleanup_snapshots deletes one batch per call), one transaction per batch, so
no lock is held for long and fills keep flowing while a year of history is trimmed. Progress goes
to stderr as JSON log lines; the total to stdout."""
from __future__ import annotations

import sys
import time

from app.db import write
from jobs import common

PROGRESS_EVERY_SECONDS = 2.0


def _cleanup(ctx: common.JobContext, args) -> int:
    retention = args.retention_days or ctx.settings.snapshot_retention_days
    started = last_report = time.monotonic()
    total = batches = 0
    while True:
        (deleted,) = write(ctx.conn, "job_cleanup_snapshots", {"retention_days": retention, "batch_size": args.batch_size})
        total += deleted
        batches += 1
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_SECONDS:
            ctx.log.info("cleanup progress", extra={"deleted": total, "batches": batches})
            last_report = now
        # A short batch means nothing older than the retention is left.
        if deleted < args.batch_size or (args.max_batches and batches >= args.max_batches):
            break
        if args.pause:
            time.sleep(args.pause)
    elapsed = time.monotonic() - started
    ctx.log.info("cleanup done", extra={"deleted": total, "batches": batches, "retention_days": retention,
                                        "seconds": round(elapsed, 3)})
    print(f"cleanup-snapshots: {total} snapshot(s) older than {retention} day(s) deleted "
          f"in {batches} batch(es), {elapsed:.2f} s")
    return common.EXIT_OK


def _positive(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def main(argv: list[str] | None = None, environ=None) -> int:
    parser = common.parser("cleanup-snapshots", __doc__.split("\n\n")[0])
    parser.add_argument("--retention-days", type=_positive, default=None,
                        help="keep this many days (default: POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS)")
    parser.add_argument("--batch-size", type=_positive, default=5000,
                        help="rows deleted per transaction (default 5000)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds to wait between batches, e.g. to let replicas catch up (default 0)")
    parser.add_argument("--max-batches", type=_positive, default=None,
                        help="stop after this many batches (the next run continues)")
    args = parser.parse_args(argv)
    return common.run("cleanup-snapshots", args, _cleanup, environ)


if __name__ == "__main__":
    sys.exit(main())
