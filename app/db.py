"""Database access: connections with this process's settings, and the named SQL statements of
app/queries.sql (the API's pool is app.api.make_api_pool).

Python keeps no SQL strings of its own: every statement it runs is a named block in
queries.sql (`-- name: apply_order_event`), almost always `SELECT pm.some_function(...)`.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import psycopg

from app.settings import Settings

QUERIES_FILE = Path(__file__).with_name("queries.sql")
_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, str]:
    """{name: sql} from a queries file; each block runs until the next `-- name:` line.
    (bench/ keeps its own statements in bench/queries.sql and reads them with this too.)"""
    parts = _NAME.split(path.read_text(encoding="utf-8"))
    result: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in result:
            raise ValueError(f"query {name!r} is defined twice in {path}")
        result[name] = body.strip().rstrip(";")
    return result


@lru_cache(maxsize=1)
def queries() -> dict[str, str]:
    """{name: sql} of app/queries.sql."""
    return load_queries(QUERIES_FILE)


def q(name: str) -> str:
    return queries()[name]


@contextmanager
def write_transaction(conn: psycopg.Connection):
    """One write transaction whose first statement takes the upgrade gate (queries.sql:
    upgrade_gate): while bin/migrate upgrades the schema this waits, so the transaction runs wholly
    on the functions before the upgrade or wholly on those after it, never on a mix."""
    with conn.transaction():
        conn.execute(q("upgrade_gate"))
        yield conn


def write(conn: psycopg.Connection, name: str, args: dict | None = None):
    """The first row of one named statement that writes, in a write transaction of its own."""
    with write_transaction(conn):
        return conn.execute(q(name), args or {}).fetchone()


def connect(settings: Settings, dbname: str | None = None, **kwargs) -> psycopg.Connection:
    return psycopg.connect(**settings.conninfo(dbname), **kwargs)
