"""bin/demo without RabbitMQ (--via sql): the demo portfolio appears, and a second run changes nothing."""
from __future__ import annotations

from decimal import Decimal

from jobs import demo


def state(db):
    return db.execute("SELECT asset, size, average_entry_price, realized_pnl, current_price FROM public.positions "
                      "ORDER BY asset").fetchall()


def test_demo_via_sql_builds_a_portfolio_and_is_idempotent(db, job_env, capsys):
    demo.main(["--via", "sql"], environ=job_env())
    first = state(db)
    by_asset = {row[0]: row for row in first}
    assert by_asset["BTCUSDT"][1:] == (Decimal("0.4"), Decimal("67336.5625"), Decimal("-14.81279"), Decimal("67900.1"))
    assert by_asset["ETHUSDT"][1] == Decimal("-3.5") and by_asset["ETHUSDT"][4] == Decimal("3455.8")
    assert "SOLUSDT" in by_asset  # from its fills, or at least from the exchange's report
    out = capsys.readouterr().out
    assert "applied directly with SQL" in out and "open position(s)" in out
    ledger = db.execute("SELECT count(*) FROM pm.executions").fetchone()[0]
    demo.main(["--via", "sql"], environ=job_env())
    assert state(db) == first
    assert db.execute("SELECT count(*) FROM pm.executions").fetchone()[0] == ledger


def test_demo_config_error_exit_2(job_env, capsys):
    assert demo.main([], environ=job_env(RABBITMQ_PORT="0")) == 2
    assert "RABBITMQ_PORT" in capsys.readouterr().err
