"""The API's own SQL (sql/0010, sql/0011): the rate-limit counter and the position list, called
directly, and the migration files run twice and rolled back with psql."""
from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.sql.calls import fill

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
API_FILES = ["repeatable/85_api_reads.sql", "repeatable/90_api_access.sql"]


def hit(db, key="k" * 64, limit=3):
    return db.execute("SELECT allowed, hits, reset_seconds FROM pm.rate_limit_hit(%s, %s)", (key, limit)).fetchone()


def test_rate_limit_counts_per_key_and_window(db):
    assert [hit(db)[:2] for _ in range(4)] == [(True, 1), (True, 2), (True, 3), (False, 4)]
    assert hit(db, key="other")[:2] == (True, 1)
    (_, _, reset) = hit(db)
    assert 1 <= reset <= 60


def test_rate_limit_first_hit_of_a_window_removes_the_keys_older_windows(db):
    db.execute("INSERT INTO pm.api_rate_limit (key_hash, window_start, hits) VALUES ('k', 60, 7), ('k', 120, 9), "
               "('someone-else', 60, 1)")
    assert hit(db, key="k")[:2] == (True, 1)      # a new window: counting starts again
    rows = db.execute("SELECT key_hash, window_start FROM pm.api_rate_limit ORDER BY 1, 2").fetchall()
    assert [r[0] for r in rows] == ["k", "someone-else"]   # k's old windows are gone, others' untouched
    assert rows[0][1] > 120


@pytest.mark.parametrize("args", [("", 5, 60), (None, 5, 60), ("k", -1, 60), ("k", 5, 0)])
def test_rate_limit_rejects_bad_arguments(db, args):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("SELECT * FROM pm.rate_limit_hit(%s, %s, %s)", args)


def test_list_positions_in_sql(db):
    fill(db, "BTCUSDT", "Buy", "1", "100")
    fill(db, "ETHUSDT", "Sell", "3", "10")
    (body,) = db.execute("SELECT pm.list_positions('btcusdt')").fetchone()
    assert [p["asset"] for p in body["positions"]] == ["BTCUSDT"] and body["total"] == 1
    (body,) = db.execute("SELECT pm.list_positions(p_size_min => 2, p_limit => 10)").fetchone()
    assert [p["asset"] for p in body["positions"]] == ["ETHUSDT"]
    (body,) = db.execute("SELECT pm.list_positions()").fetchone()
    assert body["count"] == 2 and body["total"] == 2


@pytest.mark.parametrize("call, parameter", [
    ("pm.list_positions(p_mode => 'both')", "mode"),
    ("pm.list_positions(p_status => 'x')", "status"),
    ("pm.list_positions(p_size_min => -1)", "size_min"),
    ("pm.list_positions(p_limit => -1)", "limit"),
    ("pm.list_positions(p_offset => -1)", "offset"),
])
def test_list_positions_names_the_bad_parameter(db, call, parameter):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"parameter {parameter}"):
        db.execute(f"SELECT {call}")


def psql(settings, *files: Path) -> None:
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", settings.postgres_host, "-p", str(settings.postgres_port),
            "-U", settings.postgres_user, "-d", settings.postgres_db]
    for path in files:
        args += ["-f", str(path)]
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def test_the_api_code_files_run_twice_with_psql(settings, db):
    hit(db)
    files = [SQL_DIR / name for name in API_FILES]
    psql(settings, *files, *files)  # again over what bin/migrate applied: safe to run twice
    assert hit(db)[:2] == (True, 2)
    assert db.execute("SELECT pm.list_positions() ->> 'count'").fetchone()[0] == "0"
