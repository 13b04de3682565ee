"""bin/validate-positions: validate every position against its fill ledger and the exchange's last
report in one SQL call, pm.validate_all; --fix corrects them (audited, versioned).

Exit code 3 when discrepancies were found (with --fix: found and corrected), so cron can alert."""
from __future__ import annotations

import json
import sys

from app.db import q
from jobs import common


def _count(value) -> int:
    """A summary figure that may be a number or a list of items."""
    if isinstance(value, list):
        return len(value)
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def summarise(result: dict) -> dict:
    """The figures of pm.validate_all's summary that the one-line output and the exit code need."""
    return {name: _count(result.get(name))
            for name in ("positions", "invalid", "discrepancies", "fixed", "no_authoritative_source")}


def _validate(ctx: common.JobContext, args) -> int:
    result = ctx.conn.execute(q("job_validate_all"), {"fix": args.fix, "trace": ctx.trace_id}).fetchone()[0]
    figures = summarise(result)
    for detail in result.get("details") or []:
        ctx.log.warning("position has discrepancies", extra={"position": detail})
    ctx.log.info("validation done", extra={"fix": args.fix,
                                           "summary": {k: v for k, v in result.items() if k != "details"}})
    if args.json:
        print(json.dumps(result, separators=(",", ":"), sort_keys=True))
    else:
        line = (f"validate-positions: {figures['positions']} position(s) checked, "
                f"{figures['invalid']} with discrepancies ({figures['discrepancies']} field(s))")
        if args.fix:
            line += f", {figures['fixed']} fixed"
        if figures["no_authoritative_source"]:
            line += f", {figures['no_authoritative_source']} without an authoritative source"
        print(line + f" (trace {ctx.trace_id})")
    found = figures["discrepancies"] or figures["invalid"]
    return common.EXIT_ATTENTION if found else common.EXIT_OK


def main(argv: list[str] | None = None, environ=None) -> int:
    parser = common.parser("validate-positions", __doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true",
                        help="correct discrepancies (the exchange wins, else the ledger); audited")
    parser.add_argument("--json", action="store_true",
                        help="print pm.validate_all's full JSON summary instead of the one-line summary")
    args = parser.parse_args(argv)
    return common.run("validate-positions", args, _validate, environ)


if __name__ == "__main__":
    sys.exit(main())
