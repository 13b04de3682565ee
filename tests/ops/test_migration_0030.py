"""sql/0030_grafana.sql runs with psql twice, its rollback undoes this database's part (the role is
cluster-wide and stays while other databases grant it), and applying it again restores the grants."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VIEWS = ["v_snapshot_history", "v_portfolio_history", "v_discrepancies", "v_dead_letters", "v_counters"]

pytestmark = pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")


def psql(settings, path: Path) -> subprocess.CompletedProcess:
    info = settings.conninfo()
    return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", info["host"], "-p", str(info["port"]),
                           "-U", info["user"], "-d", info["dbname"], "-f", str(path)],
                          capture_output=True, text=True, timeout=60)


def grafana_can_read(db, view: str) -> bool:
    return db.execute("SELECT has_table_privilege('pm_grafana', %s, 'SELECT')", (f"pm.{view}",)).fetchone()[0]


def test_apply_twice_rollback_twice_apply_again(db, settings):
    forward, backward = ROOT / "sql/0030_grafana.sql", ROOT / "sql/0030_grafana.rollback.sql"
    for _ in range(2):
        result = psql(settings, forward)
        assert result.returncode == 0, result.stderr
    assert all(grafana_can_read(db, v) for v in VIEWS + ["v_positions", "v_portfolio", "v_portfolio_by_asset"])
    for _ in range(2):
        result = psql(settings, backward)
        assert result.returncode == 0, result.stderr
    present = db.execute("SELECT viewname FROM pg_views WHERE schemaname = 'pm' AND viewname = ANY(%s)",
                         (VIEWS,)).fetchall()
    assert present == []
    assert not db.execute("SELECT has_schema_privilege('pm_grafana', 'pm', 'USAGE')").fetchone()[0]
    assert not grafana_can_read(db, "v_positions")
    result = psql(settings, forward)
    assert result.returncode == 0, result.stderr
    assert all(grafana_can_read(db, v) for v in VIEWS)


def test_role_cannot_log_in_by_default_and_grants_no_table(db):
    """0030 created it LOGIN with a known default password; 0072 took the login away (bin/migrate
    gives it back only with a password of the operator's, tests/ops/test_grafana.py)."""
    login, superuser, password = db.execute(
        "SELECT rolcanlogin, rolsuper, rolpassword FROM pg_authid WHERE rolname = 'pm_grafana'").fetchone()
    assert not login and not superuser and password is None
    tables = db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('pm', 'public') AND c.relkind IN ('r', 'p') "
        "AND has_table_privilege('pm_grafana', c.oid, 'SELECT')").fetchall()
    assert tables == []
