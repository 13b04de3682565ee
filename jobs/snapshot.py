"""bin/snapshot: one snapshot of every open position (and of positions closed since their last
snapshot) in one SQL call, pm.snapshot_all; position_snapshot_created events go out via the outbox."""
from __future__ import annotations

import sys
import time

from app.db import write
from jobs import common


def _snapshot(ctx: common.JobContext, args) -> int:
    started = time.monotonic()
    (result,) = write(ctx.conn, "job_snapshot_all", {"trace": ctx.trace_id})
    count = int(result.get("snapshots", 0))
    elapsed = time.monotonic() - started
    ctx.log.info("snapshots taken", extra={"result": result, "seconds": round(elapsed, 3)})
    print(f"snapshot: {count} snapshot(s) taken in {elapsed:.2f} s (trace {ctx.trace_id})")
    return common.EXIT_OK


def main(argv: list[str] | None = None, environ=None) -> int:
    args = common.parser("snapshot", __doc__.split("\n\n")[0].replace("\n", " ")).parse_args(argv)
    return common.run("snapshot", args, _snapshot, environ)


if __name__ == "__main__":
    sys.exit(main())
