"""bin/migrate: create the database if it is missing, then apply the sql/ migrations with yoyo.

yoyo's own bookkeeping tables live in schema pm, like everything else of ours.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

from app import logs
from app.settings import ConfigError, Settings, load

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
log = logging.getLogger("position_manager.migrate")


def yoyo_url(settings: Settings, dbname: str | None = None) -> str:
    auth = quote(settings.postgres_user, safe="")
    if settings.postgres_password:
        auth += ":" + quote(settings.postgres_password, safe="")
    db = quote(dbname or settings.postgres_db, safe="")
    return (f"postgresql+psycopg://{auth}@{settings.postgres_host}:{settings.postgres_port}/{db}"
            f"?schema=pm")


def ensure_database(settings: Settings, dbname: str | None = None) -> bool:
    """CREATE DATABASE when missing; True when it was created."""
    target = dbname or settings.postgres_db
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
        return True


def _backend(settings: Settings, dbname: str | None):
    with psycopg.connect(**settings.conninfo(dbname), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pm")
    return get_backend(yoyo_url(settings, dbname))


def apply(settings: Settings, dbname: str | None = None) -> list[str]:
    """Apply every pending migration; return the ids applied."""
    backend = _backend(settings, dbname)
    migrations = read_migrations(str(SQL_DIR))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def rollback(settings: Settings, dbname: str | None = None, count: int | None = None) -> list[str]:
    """Roll back applied migrations (newest first; all of them when count is None)."""
    backend = _backend(settings, dbname)
    migrations = read_migrations(str(SQL_DIR))
    with backend.lock():
        to_rollback = backend.to_rollback(migrations)
        if count is not None:
            to_rollback = to_rollback[:count]
        backend.rollback_migrations(to_rollback)
    return [m.id for m in to_rollback]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--rollback", type=int, metavar="N", default=None,
                        help="roll back the newest N migrations instead of applying")
    args = parser.parse_args(argv)
    try:
        settings = load()
    except ConfigError as exc:
        print(f"bin/migrate: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup("position-manager-migrate", settings.log_level)
    logging.getLogger("yoyo").setLevel(logging.WARNING)
    try:
        created = ensure_database(settings)
        if args.rollback:
            done = rollback(settings, count=args.rollback)
            print(f"rolled back {len(done)} migration(s) on {settings.postgres_db}: {', '.join(done) or '-'}")
            return 0
        done = apply(settings)
    except psycopg.Error as exc:
        print(f"bin/migrate: database error on {settings.postgres_host}:{settings.postgres_port}/"
              f"{settings.postgres_db}: {exc}".strip(), file=sys.stderr)
        return 1
    print(f"database {settings.postgres_db}{' created,' if created else ''} "
          f"{len(done)} migration(s) applied{': ' + ', '.join(done) if done else ' (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
