"""bin/api-keys: manage the scoped API keys of the REST API (pm.api_keys).

  bin/api-keys create NAME --scope read|write|admin [--rate-limit N]   prints the key ONCE
  bin/api-keys list [--all]                                            names, scopes, limits (never keys)
  bin/api-keys revoke NAME                                             effective at the next request

Scopes: read (every GET, validate without fix, the live stream), write (+ manual close, PATCH,
price pushes, snapshots), admin (+ validate with fix_discrepancies=true, key management over HTTP).
Only the SHA-256 digest of a key is stored. Exit codes: 0 ok, 1 failure (database, a live key of
that name exists, no such key), 2 configuration or usage error.
"""
from __future__ import annotations

import argparse
import sys

import psycopg

from app import sqlstates
from app.api.keys import SCOPES, digest, new_key
from app.db import connect, q, write
from app.settings import entry_point, load
from jobs.common import database_failure


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bin/api-keys", description="Manage the scoped API keys of the REST API.",
                                     epilog="Exit codes: 0 ok, 1 failure, 2 configuration or usage error.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("name", help="1-64 letters, digits, '.', '_' or '-'")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument("--rate-limit", type=int, default=None, metavar="N",
                        help="requests per minute (default: POSITION_MANAGER_RATE_LIMIT_DEFAULT)")
    listing = commands.add_parser("list", help="list the live keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = commands.add_parser("revoke", help="revoke the live key of that name")
    revoke.add_argument("name")
    return parser


def _create(conn, args) -> int:
    if args.rate_limit is not None and args.rate_limit <= 0:
        print("bin/api-keys: --rate-limit must be > 0", file=sys.stderr)
        return 2
    key = new_key()
    (created,) = write(conn, "extras_api_key_create", {"name": args.name, "key_hash": digest(key),
                                                       "scope": args.scope, "rate_limit": args.rate_limit})
    limit = created["rate_limit"] or "default"
    print(f"created API key {created['name']} (scope {created['scope']}, rate limit {limit}/min):")
    print(key)
    print("Store it now: it is not kept anywhere and cannot be shown again.", file=sys.stderr)
    return 0


def _list(conn, args) -> int:
    (result,) = conn.execute(q("extras_api_key_list"), {"include_revoked": args.all}).fetchone()
    keys = result["keys"]
    if not keys:
        print("no API keys" + ("" if args.all else " (live)"))
        return 0
    print(f"{'NAME':<24} {'SCOPE':<6} {'RATE/MIN':>8}  {'CREATED':<27} {'REVOKED':<27} DIGEST")
    for k in keys:
        print(f"{k['name']:<24} {k['scope']:<6} {str(k['rate_limit'] or 'default'):>8}  {k['created_at']:<27} "
              f"{k['revoked_at'] or '-':<27} {k['key_prefix']}…")
    return 0


def _revoke(conn, args) -> int:
    (revoked,) = write(conn, "extras_api_key_revoke", {"name": args.name})
    print(f"revoked API key {revoked['name']} (scope {revoked['scope']}) at {revoked['revoked_at']}")
    return 0


@entry_point("bin/api-keys")
def main(argv: list[str] | None = None, environ=None) -> int:
    args = _parser().parse_args(argv)
    settings = load(environ)
    command = {"create": _create, "list": _list, "revoke": _revoke}[args.command]
    try:
        with connect(settings, autocommit=True) as conn:
            return command(conn, args)
    except psycopg.Error as exc:
        error = sqlstates.classify(exc)
        # a refused request (no such key, a live key of that name) in the SQL's own words
        message = ((exc.diag.message_primary or str(exc).strip()) if error.http_status < 500
                   else database_failure(exc, settings))
        print(f"bin/api-keys: failed: {message}", file=sys.stderr)
        return error.job_exit


if __name__ == "__main__":
    sys.exit(main())
