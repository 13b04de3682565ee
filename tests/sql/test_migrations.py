"""Migrations: on an empty database, on a database that already holds the shared
tables with rows, applied twice (yoyo and psql), rolled back; views on an empty database."""
from __future__ import annotations

import os
import subprocess
from decimal import Decimal as D
from pathlib import Path

import psycopg
import pytest

from app import schema
from jobs import migrate
from tests.sql.conftest import assert_same_schema, schema_definition
from tests.sql.helpers import apply_order, exec_a, fold, hedge_a, position

SQL_DIR = Path(migrate.SQL_DIR)
FORWARD_FILES = sorted(p for p in SQL_DIR.glob("*.sql") if not p.name.endswith(".rollback.sql"))
CODE_FILES = [f.path for f in schema.code_files()]
# what a psql user runs, in this order: the numbered migrations, then the repeatable code files
ALL_FILES = FORWARD_FILES + CODE_FILES
YOYO_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock")

# the contract, verbatim: the shared tables as the ws-gateway migrations leave them (index names are theirs).
SHARED_DDL = """
CREATE TABLE positions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(), asset VARCHAR(20) NOT NULL, size DECIMAL(20,8) NOT NULL,
    average_entry_price DECIMAL(20,8), unrealized_pnl DECIMAL(20,8), realized_pnl DECIMAL(20,8),
    mode VARCHAR(20) NOT NULL DEFAULT 'one-way', long_size DECIMAL(20,8), short_size DECIMAL(20,8),
    long_avg_price DECIMAL(20,8), short_avg_price DECIMAL(20,8),
    last_updated TIMESTAMP NOT NULL DEFAULT NOW(), last_snapshot_at TIMESTAMP,
    current_price DECIMAL(20,8), version INTEGER NOT NULL DEFAULT 1, created_at TIMESTAMP, closed_at TIMESTAMP,
    CHECK (mode IN ('one-way','hedge')), CHECK (average_entry_price IS NULL OR average_entry_price > 0),
    CHECK (long_avg_price IS NULL OR long_avg_price > 0), CHECK (short_avg_price IS NULL OR short_avg_price > 0),
    UNIQUE (asset, mode)
);
CREATE INDEX ws_positions_asset ON positions (asset);
CREATE INDEX ws_positions_mode ON positions (mode);
CREATE INDEX ws_positions_last_updated ON positions (last_updated);
CREATE INDEX ws_positions_current_price ON positions (current_price);
CREATE INDEX ws_positions_version ON positions (version);
CREATE TABLE position_snapshots (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    position_id UUID NOT NULL REFERENCES positions(id) ON DELETE CASCADE,
    asset VARCHAR(20) NOT NULL, size DECIMAL(20,8) NOT NULL, average_entry_price DECIMAL(20,8),
    unrealized_pnl DECIMAL(20,8), realized_pnl DECIMAL(20,8), mode VARCHAR(20) NOT NULL,
    long_size DECIMAL(20,8), short_size DECIMAL(20,8), snapshot_timestamp TIMESTAMP NOT NULL DEFAULT NOW()
);
CREATE INDEX ws_snapshots_position_id ON position_snapshots (position_id);
CREATE INDEX ws_snapshots_asset ON position_snapshots (asset);
CREATE INDEX ws_snapshots_timestamp ON position_snapshots (snapshot_timestamp);
"""

EXISTING_ROWS = """
INSERT INTO positions (asset, size, average_entry_price, unrealized_pnl, realized_pnl, mode, long_size, short_size,
                       long_avg_price, short_avg_price, last_updated, current_price, version, created_at, closed_at)
VALUES ('BTCUSDT', 2, 100, 20, 5, 'one-way', NULL, NULL, NULL, NULL, '2025-12-02 10:00', 110, 7, '2025-12-01 09:00', NULL),
       ('ETHUSDT', -3, 2000, 30, 0, 'one-way', NULL, NULL, NULL, NULL, '2025-12-02 10:00', 1990, 2, '2025-12-01 09:00', NULL),
       ('SOLUSDT', 2, NULL, 9, 1, 'hedge', 3, 1, 20, 25, '2025-12-02 10:00', 22, 4, '2025-12-01 09:00', NULL),
       ('XRPUSDT', 0, NULL, 0, 12, 'one-way', NULL, NULL, NULL, NULL, '2025-12-02 10:00', NULL, 9, '2025-11-01 09:00',
        '2025-11-20 09:00');
INSERT INTO position_snapshots (position_id, asset, size, average_entry_price, unrealized_pnl, realized_pnl, mode,
                                long_size, short_size, snapshot_timestamp)
SELECT id, asset, size, average_entry_price, unrealized_pnl, realized_pnl, mode, long_size, short_size, t
  FROM positions, (VALUES (timestamp '2025-12-01 12:00'), (timestamp '2025-12-02 12:00')) AS s(t)
 WHERE asset IN ('BTCUSDT', 'SOLUSDT');
"""

SHARED_POSITION_COLUMNS = ("id, asset, size, average_entry_price, unrealized_pnl, realized_pnl, mode, long_size, "
                         "short_size, long_avg_price, short_avg_price, last_updated, last_snapshot_at, current_price, "
                         "version, created_at, closed_at")
SHARED_SNAPSHOT_COLUMNS = ("id, position_id, asset, size, average_entry_price, unrealized_pnl, realized_pnl, mode, "
                         "long_size, short_size, snapshot_timestamp")


def shared_rows(conn) -> tuple[list, list]:
    return (conn.execute(f"SELECT {SHARED_POSITION_COLUMNS} FROM public.positions ORDER BY asset, mode").fetchall(),
            conn.execute(f"SELECT {SHARED_SNAPSHOT_COLUMNS} FROM public.position_snapshots ORDER BY id").fetchall())


def pm_objects(conn) -> dict[str, list[str]]:
    """Everything of ours in schema pm except yoyo's bookkeeping (which lives there too)."""
    rels = conn.execute(
        "SELECT c.relname || ':' || c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'pm' AND c.relkind IN ('r', 'v', 'm', 'p', 'u') ORDER BY 1").fetchall()
    funcs = conn.execute("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                         "WHERE n.nspname = 'pm' ORDER BY 1").fetchall()
    types = conn.execute("SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                         "LEFT JOIN pg_class c ON c.oid = t.typrelid WHERE n.nspname = 'pm' "
                         "AND t.typtype IN ('c', 'e', 'd') AND (c.oid IS NULL OR c.relkind = 'c') ORDER BY 1").fetchall()
    return {"relations": [r for (r,) in rels if r.split(":")[0] not in YOYO_TABLES],
            "functions": [f for (f,) in funcs], "types": [t for (t,) in types]}


def connect_to(settings, **kw) -> psycopg.Connection:
    return psycopg.connect(**settings.conninfo(), **kw)


# ---------------------------------------------------------------------------------------------
# (a) empty database
# ---------------------------------------------------------------------------------------------

def test_all_migrations_on_an_empty_database(empty_db_settings):
    applied = migrate.apply(empty_db_settings)
    assert applied == [p.stem for p in FORWARD_FILES] + [f"repeatable/{p.name}" for p in CODE_FILES]
    with connect_to(empty_db_settings, autocommit=True) as conn:
        for name in ("pm.apply_order_event(jsonb)", "pm.apply_position_event(jsonb)", "pm.fold_ledger(uuid)"):
            assert conn.execute("SELECT to_regprocedure(%s)", (name,)).fetchone()[0] is not None, name
        for view in ("pm.v_positions", "pm.v_portfolio", "pm.v_portfolio_by_asset"):
            assert conn.execute("SELECT to_regclass(%s)", (view,)).fetchone()[0] is not None, view
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename NOT IN "
                            "('positions', 'position_snapshots')").fetchone()[0] == 0, "our objects belong in pm"
        assert apply_order(conn, exec_a("m1", "Buy", 1, 100, "0", 0))["status"] == "applied"


# ---------------------------------------------------------------------------------------------
# (b) the shared tables already exist, with rows
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def existing_db(empty_db_settings):
    with connect_to(empty_db_settings, autocommit=True) as conn:
        conn.execute(SHARED_DDL)
        conn.execute(EXISTING_ROWS)
    return empty_db_settings


def test_existing_rows_survive_and_views_include_them(existing_db):
    with connect_to(existing_db, autocommit=True) as conn:
        before = shared_rows(conn)
    migrate.apply(existing_db)
    with connect_to(existing_db, autocommit=True) as conn:
        assert shared_rows(conn) == before
        assert len(before[0]) == 4 and len(before[1]) == 4
        view = {r[0]: r[1:] for r in conn.execute(
            "SELECT asset, side, is_open, exposure_usdt FROM pm.v_positions ORDER BY asset").fetchall()}
        assert view == {"BTCUSDT": ("long", True, 220), "ETHUSDT": ("short", True, 5970),
                        "SOLUSDT": ("hedged", True, 88), "XRPUSDT": ("flat", False, None)}
        total, net, unreal, realized, n_open, n_long, n_short = conn.execute(
            "SELECT total_exposure_usdt, net_exposure_usdt, total_unrealized_pnl_usdt, total_realized_pnl_usdt, "
            "open_positions_count, long_positions_count, short_positions_count FROM pm.v_portfolio").fetchone()
        assert (total, net, unreal, realized) == (6278, -5706, 59, 18)
        assert (n_open, n_long, n_short) == (3, 2, 1)
        by_asset = conn.execute("SELECT asset FROM pm.v_portfolio_by_asset ORDER BY asset").fetchall()
        assert by_asset == [("BTCUSDT",), ("ETHUSDT",), ("SOLUSDT",)]
        assert conn.execute("SELECT pm.get_position('btcusdt')").fetchone()[0]["version"] == 7


def test_fill_on_a_pre_existing_position_builds_on_its_stored_state(existing_db):
    migrate.apply(existing_db)
    with connect_to(existing_db, autocommit=True) as conn:
        apply_order(conn, exec_a("pre-1", "Buy", 2, 120, "0.1", 0))            # BTC: 2 @ 100, realized 5
        btc = position(conn)
        assert (btc["size"], btc["average_entry_price"], btc["realized_pnl"], btc["version"]) == (4, 110, D("4.9"), 8)
        apply_order(conn, exec_a("pre-2", "Buy", 1, 1900, "0", 0, asset="ETHUSDT"))   # ETH: -3 @ 2000
        eth = position(conn, "ETHUSDT")
        assert (eth["size"], eth["average_entry_price"], eth["realized_pnl"]) == (-2, 2000, 100)
        apply_order(conn, hedge_a("pre-3", 2, "Buy", 1, 20, "0", 0, asset="SOLUSDT"))  # SOL short leg 1 @ 25
        sol = position(conn, "SOLUSDT", "hedge")
        assert (sol["long_size"], sol["long_avg_price"], sol["short_size"], sol["short_avg_price"]) == (3, 20, 0, None)
        assert (sol["size"], sol["realized_pnl"]) == (3, 6)
        apply_order(conn, exec_a("pre-4", "Sell", 1, 0.5, "0", 0, asset="XRPUSDT"))     # reopens the closed row
        xrp = position(conn, "XRPUSDT")
        assert (xrp["size"], xrp["realized_pnl"], xrp["closed_at"]) == (-1, 12, None)
        for row in (btc, eth, sol, xrp):
            row = position(conn, row["asset"], row["mode"])
            st = fold(conn, row["id"])              # the opening balance makes the ledger reproduce the row
            assert (st["size"], st["avg_price"], st["realized"]) == (
                row["size"], row["average_entry_price"], row["realized_pnl"])
        snapshots = conn.execute("SELECT count(*) FROM public.position_snapshots").fetchone()[0]
        assert snapshots == 4


# ---------------------------------------------------------------------------------------------
# (c) twice: yoyo, and every file through psql
# ---------------------------------------------------------------------------------------------

def test_yoyo_apply_twice_is_a_no_op(existing_db):
    assert migrate.apply(existing_db)
    with connect_to(existing_db, autocommit=True) as conn:
        before, rows = schema_definition(conn), shared_rows(conn)
    assert migrate.apply(existing_db) == []
    with connect_to(existing_db, autocommit=True) as conn:
        assert schema_definition(conn) == before
        assert shared_rows(conn) == rows


def psql(settings, *paths: Path) -> subprocess.CompletedProcess:
    """psql -v ON_ERROR_STOP=1 -f FILE [-f FILE ...] in one session: files run in the given order."""
    env = dict(os.environ, PGHOST=settings.postgres_host, PGPORT=str(settings.postgres_port),
               PGUSER=settings.postgres_user, PGDATABASE=settings.postgres_db)
    if settings.postgres_password:
        env["PGPASSWORD"] = settings.postgres_password
    files = [arg for p in paths for arg in ("-f", str(p))]
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *files],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("preexisting", [False, True], ids=["empty", "shared-tables-with-rows"])
def test_every_file_runs_twice_through_psql(empty_db_settings, preexisting):
    if preexisting:
        with connect_to(empty_db_settings, autocommit=True) as conn:
            conn.execute(SHARED_DDL)
            conn.execute(EXISTING_ROWS)
    # as a psql user applies them: each numbered migration once, in order (here twice in a row: a
    # repeated run does no harm), then every repeatable file, as often as it comes (here twice in a
    # row, then the whole set once more). A numbered migration is not re-run after later ones, as
    # no migration tool does: an old CREATE OR REPLACE VIEW cannot take back columns added since.
    done = psql(empty_db_settings, *[p for p in ALL_FILES for _ in (0, 1)], *CODE_FILES)
    assert done.returncode == 0, done.stderr
    with connect_to(empty_db_settings, autocommit=True) as conn:
        assert apply_order(conn, exec_a("psql-1", "Buy", 1, 100, "0", 0, asset="ADAUSDT"))["status"] == "applied"
        assert conn.execute("SELECT count(*) FROM pm.v_positions").fetchone()[0] == (5 if preexisting else 1)


def test_psql_and_yoyo_give_the_same_schema(empty_db_settings, second_empty_db_settings):
    """The files run by psql and the files run by yoyo leave identical definitions."""
    yoyo_settings = second_empty_db_settings
    migrate.apply(yoyo_settings)
    done = psql(empty_db_settings, *ALL_FILES)
    assert done.returncode == 0, done.stderr
    with connect_to(empty_db_settings) as a, connect_to(yoyo_settings) as b:
        assert_same_schema(a, b, applied_code=False)


# ---------------------------------------------------------------------------------------------
# (d) rollback
# ---------------------------------------------------------------------------------------------

def test_rollback_removes_our_objects_and_keeps_shared_rows(existing_db):
    migrate.apply(existing_db)
    with connect_to(existing_db, autocommit=True) as conn:
        apply_order(conn, exec_a("rb-1", "Buy", 1, 100, "0", 0, asset="NEWUSDT"))
        rows = shared_rows(conn)
    rolled_back = migrate.rollback(existing_db)
    assert sorted(rolled_back) == sorted(p.stem for p in FORWARD_FILES)
    with connect_to(existing_db, autocommit=True) as conn:
        leftovers = pm_objects(conn)
        assert leftovers == {"relations": [], "functions": [], "types": []}, leftovers
        assert shared_rows(conn) == rows                  # 5 positions (4 old + 1 new) and 4 snapshots
        assert len(rows[0]) == 5
    # and forward again: the rows are taken over as they are
    migrate.apply(existing_db)
    with connect_to(existing_db, autocommit=True) as conn:
        assert shared_rows(conn) == rows
        assert conn.execute("SELECT count(*) FROM pm.v_positions").fetchone()[0] == 5


# ---------------------------------------------------------------------------------------------
# (e) views on an empty database
# ---------------------------------------------------------------------------------------------

def test_views_on_an_empty_database(db):
    assert db.execute("SELECT count(*) FROM pm.v_positions").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM pm.v_portfolio_by_asset").fetchone()[0] == 0
    rows = db.execute("SELECT * FROM pm.v_portfolio").fetchall()
    assert len(rows) == 1
    names = [c.name for c in db.execute("SELECT * FROM pm.v_portfolio").description]
    values = dict(zip(names, rows[0]))
    for col in ("total_exposure_usdt", "net_exposure_usdt", "total_unrealized_pnl_usdt", "total_realized_pnl_usdt",
                "total_pnl_usdt", "portfolio_value_usdt", "open_positions_count", "long_positions_count",
                "short_positions_count"):
        assert values[col] is not None and values[col] == 0, (col, values[col])
    assert values["calculated_at"] is not None
