"""Fixtures of the SQL-core tests: databases of our own (empty, or migrated once per module),
named uniquely per test process and dropped at teardown."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from app import settings as settings_mod
from jobs import migrate
from tests.conftest import base_environ


@contextmanager
def scratch_database(prefix: str = "pm_sqlt"):
    """An empty database with a unique name; yields Settings pointing at it; dropped afterwards."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    settings = settings_mod.load(base_environ(POSTGRES_DB=name))
    with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield settings
    finally:
        with psycopg.connect(**settings.conninfo("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_db_settings():
    """Settings for a brand-new empty database (no migrations)."""
    with scratch_database() as settings:
        yield settings


@pytest.fixture
def second_empty_db_settings():
    """Another brand-new empty database, for comparisons."""
    with scratch_database() as settings:
        yield settings


@pytest.fixture(scope="module")
def shared_migrated_db():
    """One migrated database for a whole module whose tests assert that they write nothing
    (each test compares row counts before/after, so a test that does write cannot hide)."""
    with scratch_database() as settings:
        migrate.apply(settings)
        with psycopg.connect(**settings.conninfo(), autocommit=True) as conn:
            yield conn


def schema_definition(conn) -> dict[str, list]:
    """Everything that defines our schemas (yoyo's bookkeeping aside): columns, constraints, indexes,
    views, functions (full definitions), triggers, types, sequences, comments and privileges."""
    queries = {
        "columns": """
            SELECT table_schema, table_name, column_name, ordinal_position, data_type, character_maximum_length,
                   numeric_precision, numeric_scale, column_default, is_nullable, collation_name
              FROM information_schema.columns WHERE table_schema IN ('pm', 'public') AND table_name !~ 'yoyo'""",
        "tables": """
            SELECT n.nspname, c.relname, c.relkind::text, c.relpersistence::text, c.reloptions::text,
                   coalesce(c.relacl::text, '')
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('pm', 'public') AND c.relkind IN ('r', 'v', 'm', 'p', 'S', 'u') AND c.relname !~ 'yoyo'""",
        "constraints": """
            SELECT n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
              FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
             WHERE n.nspname IN ('pm', 'public') AND c.conrelid::regclass::text !~ 'yoyo'""",
        "indexes": """SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
                       WHERE schemaname IN ('pm', 'public') AND tablename !~ 'yoyo'""",
        "views": "SELECT schemaname, viewname, definition FROM pg_views WHERE schemaname = 'pm'",
        "functions": """
            SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), coalesce(obj_description(p.oid, 'pg_proc'), ''),
                   coalesce(p.proacl::text, '')
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pm'""",
        "triggers": """
            SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
              FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('pm', 'public') AND NOT t.tgisinternal""",
        "types": """
            SELECT t.typname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod)
              FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_class c ON c.oid = t.typrelid
              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
             WHERE n.nspname = 'pm' AND c.relkind = 'c'""",
        "comments": """
            SELECT c.oid::regclass::text, coalesce(obj_description(c.oid, 'pg_class'), '')
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('pm', 'public') AND c.relkind IN ('r', 'v', 'm', 'u') AND c.relname !~ 'yoyo'""",
    }
    return {name: sorted(tuple(str(v) for v in row) for row in conn.execute(sql).fetchall())
            for name, sql in queries.items()}


def assert_same_schema(upgraded, fresh, *, applied_code: bool = True) -> None:
    """Both schemas define exactly the same; applied_code: and bin/migrate recorded the same code files."""
    a, b = schema_definition(upgraded), schema_definition(fresh)
    for part in a:
        only_upgraded = sorted(set(a[part]) - set(b[part]))
        only_fresh = sorted(set(b[part]) - set(a[part]))
        assert not only_upgraded and not only_fresh, (
            f"{part} differ after the upgrade\nonly in the upgraded database: {only_upgraded[:5]}\n"
            f"only in a fresh database: {only_fresh[:5]}")
    if applied_code:
        assert (upgraded.execute("SELECT file, checksum FROM pm.schema_code ORDER BY file").fetchall()
                == fresh.execute("SELECT file, checksum FROM pm.schema_code ORDER BY file").fetchall())
