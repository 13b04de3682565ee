"""Shared fixtures: a template database built once from the real migrations (sql/ via yoyo),
and a fresh clone of it for every test (pytest-postgresql)."""
from __future__ import annotations

import os

import psycopg
import pytest
from pytest_postgresql import factories

from app import settings as settings_mod
from jobs import migrate

PG_HOST = os.environ.get("PM_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PM_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PM_TEST_PG_USER", "postgres")
# One name per pytest process, so that parallel runs on one server never share databases.
TEST_DBNAME = f"pm_test_{os.getpid()}"
# The API refuses short or placeholder keys (app.settings.secret_problem): a key of the tests only.
TEST_API_KEY = "pm-tests-only-Kq7Zr2Wx9Lm4Tb8Nc"


def base_environ(**extra: str) -> dict[str, str]:
    env = {
        "POSTGRES_HOST": PG_HOST,
        "POSTGRES_PORT": str(PG_PORT),
        "POSTGRES_USER": PG_USER,
        "POSTGRES_DB": TEST_DBNAME,
        "POSITION_MANAGER_API_KEY": TEST_API_KEY,
    }
    env.update(extra)
    return env


def load_migrations(host, port, user, dbname, password=None, **_):
    """pytest-postgresql loader: the template database gets exactly what bin/migrate applies."""
    env = base_environ(POSTGRES_HOST=str(host), POSTGRES_PORT=str(port), POSTGRES_USER=str(user))
    if password:
        env["POSTGRES_PASSWORD"] = str(password)
    migrate.apply(settings_mod.load(env), dbname)


postgresql_noproc = factories.postgresql_noproc(
    host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=TEST_DBNAME, load=[load_migrations])
postgresql = factories.postgresql("postgresql_noproc")


@pytest.fixture
def settings(postgresql) -> settings_mod.Settings:
    """Settings that point at this test's own database."""
    return settings_mod.load(base_environ(POSTGRES_DB=postgresql.info.dbname))


@pytest.fixture
def connect(settings):
    """Open extra connections to this test's database (closed at teardown)."""
    opened: list[psycopg.Connection] = []

    def _connect(**kwargs) -> psycopg.Connection:
        conn = psycopg.connect(**settings.conninfo(), **kwargs)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def db(connect) -> psycopg.Connection:
    """An autocommit connection with the service's pm.* settings, for SQL-level tests."""
    return connect(autocommit=True)
