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
