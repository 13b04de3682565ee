"""Database access: one pool per process, and the named SQL statements of app/queries.sql.

Python keeps no SQL strings of its own: every statement it runs is a named block in
queries.sql (`-- name: apply_order_event`), almost always `SELECT pm.some_function(...)`.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from app.settings import Settings

QUERIES_FILE = Path(__file__).with_name("queries.sql")
_NAME = re.compile(r"^--\s*name:\s*([a-z0-9_]+)\s*$", re.MULTILINE)


@lru_cache(maxsize=1)
def queries() -> dict[str, str]:
    """{name: sql} from queries.sql; each block runs until the next `-- name:` line."""
    text = QUERIES_FILE.read_text(encoding="utf-8")
    parts = _NAME.split(text)
    result: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in result:
            raise ValueError(f"query {name!r} is defined twice in {QUERIES_FILE}")
        result[name] = body.strip().rstrip(";")
    return result


def q(name: str) -> str:
    return queries()[name]


def connect(settings: Settings, dbname: str | None = None, **kwargs) -> psycopg.Connection:
    return psycopg.connect(**settings.conninfo(dbname), **kwargs)


def make_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None,
              open: bool = True, timeout: float = 5.0, name: str | None = None) -> ConnectionPool:
    """A pool whose connections carry the pm.* settings (thresholds) of this process."""
    return ConnectionPool(
        kwargs=settings.conninfo(),
        min_size=min_size,
        max_size=max_size or max(min_size, settings.db_pool_size),
        open=open,
        timeout=timeout,
        name=name or settings.service_name,
        check=ConnectionPool.check_connection,
        reconnect_timeout=0,
    )
