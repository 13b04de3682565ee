"""The cron-style jobs: what they do to the database, their one-line summary, their exit codes,
the advisory lock against overlapping runs, and the bin/ wrappers as cron runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import cleanup_snapshots, common, snapshot, validate_positions
from tests.ops.conftest import fill, set_price

ROOT = Path(__file__).resolve().parents[2]
JOBS = ["snapshot", "cleanup-snapshots", "validate-positions", "refresh-prices"]


def snapshots(db, asset: str | None = None) -> int:
    if asset:
        return db.execute("SELECT count(*) FROM public.position_snapshots WHERE asset = %s", (asset,)).fetchone()[0]
    return db.execute("SELECT count(*) FROM public.position_snapshots").fetchone()[0]


def test_snapshot_takes_one_per_open_and_newly_closed_position(db, job_env, capsys):
    fill(db, "BTCUSDT", "Buy", "1", "60000")
    fill(db, "ETHUSDT", "Buy", "2", "3000")
    fill(db, "SOLUSDT", "Buy", "10", "150")
    fill(db, "SOLUSDT", "Sell", "10", "160")  # closed, never snapshotted: gets one
    set_price(db, "BTCUSDT", "61000")
    assert snapshot.main([], environ=job_env()) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("snapshot: 3 snapshot(s) taken")
    assert snapshots(db) == 3
    row = db.execute("SELECT s.snapshot_timestamp, p.last_snapshot_at, s.snapshot_data->>'current_price' "
                     "FROM public.position_snapshots s JOIN public.positions p ON p.id = s.position_id "
                     "WHERE s.asset = 'BTCUSDT'").fetchone()
    assert row[0] == row[1] and row[2] == "61000"
    events = db.execute("SELECT count(*) FROM pm.outbox WHERE event_type = 'position_snapshot_created'").fetchone()[0]
    assert events == 3
    # second run: the closed position is not snapshotted again
    assert snapshot.main([], environ=job_env()) == 0
    assert snapshots(db, "SOLUSDT") == 1 and snapshots(db, "BTCUSDT") == 2


def _old_snapshots(db, asset: str, days_ago: list[int]) -> None:
    for days in days_ago:
        db.execute("INSERT INTO public.position_snapshots (position_id, asset, size, mode, snapshot_timestamp) "
                   "SELECT id, asset, size, mode, (now() AT TIME ZONE 'UTC') - make_interval(days => %s) "
                   "FROM public.positions WHERE asset = %s", (days, asset))


def test_cleanup_deletes_only_older_than_retention_in_batches(db, job_env, capsys):
    fill(db, "BTCUSDT", "Buy", "1", "60000")
    _old_snapshots(db, "BTCUSDT", [400] * 7 + [366] * 5 + [300, 10, 1])
    code = cleanup_snapshots.main(["--batch-size", "5"], environ=job_env(POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS="365"))
    assert code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("cleanup-snapshots: 12 snapshot(s) older than 365 day(s) deleted in 3 batch(es)")
    assert snapshots(db) == 3
    # the option overrides the setting; nothing left to do is a success too
    assert cleanup_snapshots.main(["--retention-days", "5"], environ=job_env()) == 0
    assert snapshots(db) == 1
    assert cleanup_snapshots.main([], environ=job_env()) == 0
    assert "0 snapshot(s)" in capsys.readouterr().out


def test_cleanup_max_batches_stops_early(db, job_env, capsys):
    fill(db, "BTCUSDT", "Buy", "1", "60000")
    _old_snapshots(db, "BTCUSDT", [400] * 10)
    assert cleanup_snapshots.main(["--batch-size", "3", "--max-batches", "2"], environ=job_env()) == 0
    assert snapshots(db) == 4


def test_cleanup_rejects_bad_options(job_env, capsys):
    with pytest.raises(SystemExit) as exc:
        cleanup_snapshots.main(["--batch-size", "0"], environ=job_env())
    assert exc.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_validate_clean_positions_exit_0(db, job_env, capsys):
    fill(db, "BTCUSDT", "Buy", "1", "60000")
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    assert validate_positions.main([], environ=job_env()) == 0
    out = capsys.readouterr().out
    assert "2 position(s) checked, 0 with discrepancies" in out


def test_validate_reports_discrepancy_exit_3_and_fix_repairs_it(db, job_env, capsys):
    fill(db, "BTCUSDT", "Buy", "1", "60000")
    fill(db, "ETHUSDT", "Buy", "2", "3000")
    # Someone edited the shared table behind the ledger's back.
    db.execute("UPDATE public.positions SET size = 1.5 WHERE asset = 'BTCUSDT'")
    assert validate_positions.main([], environ=job_env()) == 3
    captured = capsys.readouterr()
    assert "1 with discrepancies" in captured.out
    assert "BTCUSDT" in captured.err  # the details go to the log
    assert db.execute("SELECT size FROM public.positions WHERE asset='BTCUSDT'").fetchone()[0] == 1.5
    assert validate_positions.main(["--fix", "--json"], environ=job_env()) == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["fixed"] == 1 and summary["invalid"] == 1
    assert db.execute("SELECT size FROM public.positions WHERE asset='BTCUSDT'").fetchone()[0] == 1
    assert validate_positions.main([], environ=job_env()) == 0


@pytest.mark.parametrize("job", JOBS)
def test_overlapping_run_is_skipped_with_exit_75(job, connect, job_env, fake_bybit):
    module = {"snapshot": snapshot, "cleanup-snapshots": cleanup_snapshots,
              "validate-positions": validate_positions}.get(job)
    holder = connect(autocommit=True)
    assert holder.execute("SELECT pg_try_advisory_lock(%s)", (common.LOCK_KEYS[job],)).fetchone()[0]
    if module is None:
        from jobs import refresh_prices
        code = refresh_prices.main([], environ=job_env(BYBIT_API_URL=fake_bybit.url), sleep=lambda s: None)
    else:
        code = module.main([], environ=job_env())
    assert code == common.EXIT_LOCKED
    # another job's lock does not block this one
    holder.execute("SELECT pg_advisory_unlock(%s)", (common.LOCK_KEYS[job],))
    other = next(j for j in JOBS if j != job)
    holder.execute("SELECT pg_advisory_lock(%s)", (common.LOCK_KEYS[other],))
    if module is not None:
        assert module.main([], environ=job_env()) in (0, 3)


def test_lock_keys_are_distinct():
    assert len(set(common.LOCK_KEYS.values())) == len(common.LOCK_KEYS) == len(JOBS)


def _bin(job: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "POSITION_MANAGER_"))}
    full_env.update(env)
    return subprocess.run([str(ROOT / "bin" / job), *args], env=full_env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("job", JOBS)
def test_bin_help(job):
    result = _bin(job, {}, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: bin/{job}") and "Exit codes" in result.stdout


@pytest.mark.parametrize("job", JOBS)
def test_bin_config_error_names_the_variable_exit_2(job, job_env):
    result = _bin(job, job_env(POSTGRES_PORT="not-a-port"))
    assert result.returncode == 2
    assert "POSTGRES_PORT" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("job", JOBS)
def test_bin_database_unreachable_exit_1(job, job_env):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _bin(job, job_env(POSTGRES_PORT=str(port)))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bin/{job}: failed: database unreachable at 127.0.0.1:{port}/")


def test_bin_snapshot_as_cron_runs_it(db, job_env):
    fill(db, "BTCUSDT", "Buy", "1", "60000")
    result = _bin("snapshot", job_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "1 snapshot(s) taken" in result.stdout
    # stderr carries JSON log lines only
    for line in result.stderr.strip().splitlines():
        assert json.loads(line)["service"] == "position-manager-snapshot"
    assert snapshots(db) == 1


def test_job_modules_run_with_python_m(job_env):
    result = subprocess.run([sys.executable, "-m", "jobs.validate_positions", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--fix" in result.stdout
