"""bin/migrate: create the database if it is missing, then upgrade it to this code's schema.

One upgrade is ONE transaction (docs/migrations.md):
  1. LOCK pm.upgrade_gate IN ACCESS EXCLUSIVE MODE: waits for the service's write transactions in
     flight (each takes the gate ACCESS SHARE first) and holds new ones until the commit;
  2. the pending numbered migrations sql/NNNN_*.sql, in order (yoyo reads them and keeps the ids
     it applied in pm._yoyo_migration; each runs under a savepoint of the one transaction);
  3. the repeatable files sql/repeatable/*.sql whose content changed (all of them when a numbered
     migration was applied), in name order; their checksums go to pm.schema_code;
  4. with POSITION_MANAGER_GRAFANA_LOGIN_ROLE / _PASSWORD set: how Grafana reaches the read-only
     role pm_grafana (granted to that login role / its password), pm.grafana_access;
  5. COMMIT. Any error rolls everything back: the database stays exactly as it was.

`--check` changes nothing: it says whether the database is behind this code (exit 1) or not (0).
yoyo's own bookkeeping tables live in schema pm, like everything else of ours.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

from app import logs, schema
from app.db import q
from app.settings import ConfigError, Settings, load, secret_problem

SQL_DIR = schema.SQL_DIR
EXIT_BEHIND = 1
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


@dataclass
class Plan:
    """What an upgrade of one database to this code would do."""
    pending: list[str]                       # numbered migrations not applied yet
    code: list[schema.CodeFile]              # repeatable files to (re-)apply
    unknown: list[str] = field(default_factory=list)   # applied ids this code does not have
    database: dict | None = None             # pm.schema_version() before the upgrade

    @property
    def behind(self) -> bool:
        return bool(self.pending or self.code)


def _applied_code(cursor) -> dict[str, str]:
    if cursor.execute(q("migrate_has_code_table")).fetchone()[0]:
        return dict(cursor.execute(q("migrate_applied_code")).fetchall())
    return {}


def _plan(backend, migrations, sql_dir: Path) -> Plan:
    pending = backend.to_apply(migrations)
    cur = backend.cursor()
    applied_ids = {row[0] for row in cur.execute(q("migrate_applied_ids")).fetchall()}
    unknown = sorted(applied_ids - {m.id for m in migrations})
    recorded = _applied_code(cur)
    files = schema.code_files(sql_dir / "repeatable")
    changed = files if pending else [f for f in files if recorded.get(f.name) != f.checksum]
    return Plan(pending=[m.id for m in pending], code=changed, unknown=unknown)


def plan(settings: Settings, dbname: str | None = None, sql_dir: Path = SQL_DIR) -> Plan:
    """What `apply` would do now; changes nothing (the database must exist)."""
    backend = _backend(settings, dbname)
    result = _plan(backend, read_migrations(str(sql_dir)), sql_dir)
    with psycopg.connect(**settings.conninfo(dbname), autocommit=True) as conn:
        if conn.execute(q("migrate_has_schema_version")).fetchone()[0]:
            result.database = conn.execute(q("schema_version")).fetchone()[0]
    return result


def apply(settings: Settings, dbname: str | None = None, lock_timeout: float = 60.0,
          sql_dir: Path = SQL_DIR) -> list[str]:
    """Upgrade in one transaction; return what was applied (migration ids, then code file names).
    sql_dir: another copy of sql/ (tests upgrade to a changed copy)."""
    backend = _backend(settings, dbname)
    migrations = read_migrations(str(sql_dir))
    with backend.lock():
        pending = backend.to_apply(migrations)
        with backend.transaction():
            cur = backend.cursor()
            cur.execute(q("migrate_lock_timeout"), {"ms": int(lock_timeout * 1000)})
            gated = _take_gate(cur)
            for migration in pending:
                log.info("applying migration", extra={"migration": migration.id})
                migration.process_steps(backend, "apply")
                backend.mark_one(migration, log=False)
                backend.log_migration(migration, "apply")
            if not gated:
                _take_gate(cur)   # a first upgrade creates the gate: hold it from here to the commit
            recorded = _applied_code(cur)
            files = schema.code_files(sql_dir / "repeatable")
            changed = [f for f in files if pending or recorded.get(f.name) != f.checksum]
            for code in changed:
                log.info("applying code file", extra={"file": code.name})
                cur.execute(code.text)
                cur.execute(q("migrate_record_code"), {"file": code.name, "checksum": code.checksum})
            if changed or pending:
                cur.execute(q("migrate_forget_code"), {"files": [f.name for f in files]})
            if settings.grafana_login_role or settings.grafana_password:
                # how Grafana reaches the read-only role (NOLOGIN by default), from the environment
                (access,) = cur.execute(q("migrate_grafana_access"), {
                    "login_role": settings.grafana_login_role, "password": settings.grafana_password}).fetchone()
                log.info("grafana access", extra={"grafana": access})
    return [m.id for m in pending] + [f"repeatable/{f.name}" for f in changed]


def _take_gate(cur) -> bool:
    """ACCESS EXCLUSIVE on the upgrade gate when it exists; False when it does not (yet)."""
    if not cur.execute(q("migrate_has_gate")).fetchone()[0]:
        return False
    cur.execute(q("migrate_take_gate"))
    return True


def rollback(settings: Settings, dbname: str | None = None, lock_timeout: float = 60.0) -> list[str]:
    """Remove everything of ours, in one transaction behind the gate like `apply`: the code layer
    (every function and view), then every applied numbered migration with its .rollback.sql file,
    newest first. The shared tables, their rows and the columns the wider system expects stay;
    yoyo's bookkeeping stays. There is no partial rollback: an older numbered migration's functions
    need the code layer of its own time, so a deployed database rolls forward (a new migration)."""
    backend = _backend(settings, dbname)
    migrations = read_migrations(str(SQL_DIR))
    with backend.lock():
        to_rollback = backend.to_rollback(migrations)
        with backend.transaction():
            cur = backend.cursor()
            cur.execute(q("migrate_lock_timeout"), {"ms": int(lock_timeout * 1000)})
            _take_gate(cur)
            if cur.execute(q("migrate_has_code_table")).fetchone()[0]:
                cur.execute(q("migrate_forget_code"), {"files": []})
            cur.execute(q("migrate_drop_code_layer"))
            for migration in to_rollback:
                log.info("rolling back migration", extra={"migration": migration.id})
                migration.process_steps(backend, "rollback")
                backend.unmark_one(migration, log=False)
                backend.log_migration(migration, "rollback")
    return [m.id for m in to_rollback]


def check(settings: Settings) -> int:
    """--check: print where the database stands; exit 0 up to date, 1 behind (or ahead)."""
    result = plan(settings)
    expected = schema.expected()
    have = (result.database or {}).get("version") or "none"
    if result.unknown:
        print(f"database {settings.postgres_db} has migrations this code does not know: "
              f"{', '.join(result.unknown)} (it is newer than this code)")
        return EXIT_BEHIND
    if not result.behind:
        print(f"database {settings.postgres_db} is up to date: schema {have}")
        return 0
    parts = []
    if result.pending:
        parts.append(f"{len(result.pending)} migration(s) pending: {', '.join(result.pending)}")
    if result.code and not result.pending:
        parts.append(f"{len(result.code)} code file(s) changed: {', '.join(f.name for f in result.code)}")
    print(f"database {settings.postgres_db} is behind: schema {have}, this code {expected['version']}; "
          f"{'; '.join(parts)}. Run bin/migrate.")
    return EXIT_BEHIND


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/migrate", description=__doc__.splitlines()[0],
                                     epilog="Exit codes: 0 ok (or up to date), 1 failure (or, with --check, "
                                            "behind), 2 configuration error.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true",
                       help="only tell whether the database is behind this code (exit 1) or not (0)")
    group.add_argument("--rollback", action="store_true",
                       help="remove everything of ours from the database (functions, views, our tables in "
                            "schema pm; the shared tables and their rows stay)")
    parser.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="give up when the service's write transactions hold the upgrade gate longer "
                             "(default 60)")
    args = parser.parse_args(argv)
    try:
        settings = load()
        problem = secret_problem(settings.grafana_password, 16) if settings.grafana_password else None
        if problem:
            raise ConfigError(f"POSITION_MANAGER_GRAFANA_PASSWORD {problem}; use at least 16 random characters")
    except ConfigError as exc:
        print(f"bin/migrate: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup("position-manager-migrate", settings.log_level)
    logging.getLogger("yoyo").setLevel(logging.WARNING)
    where = f"{settings.postgres_host}:{settings.postgres_port}/{settings.postgres_db}"
    try:
        if args.check:
            return check(settings)
        created = ensure_database(settings)
        if args.rollback:
            done = rollback(settings, lock_timeout=args.lock_timeout)
            print(f"rolled back {len(done)} migration(s) on {settings.postgres_db}: {', '.join(done) or '-'}")
            return 0
        done = apply(settings, lock_timeout=args.lock_timeout)
    except psycopg.Error as exc:
        text = " ".join(str(exc).split())
        print(f"bin/migrate: database error on {where}: {text}", file=sys.stderr)
        return 1
    version = schema.expected()["version"]
    print(f"database {settings.postgres_db}{' created,' if created else ''} "
          f"{len(done)} change(s) applied{': ' + ', '.join(done) if done else ' (up to date)'}; schema {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
