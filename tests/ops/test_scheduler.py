"""bin/scheduler: runs each job's bin/ script at its interval; --once runs them all; SIGTERM stops it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.ops.conftest import Reply, bybit_body, fill

ROOT = Path(__file__).resolve().parents[2]


def _env(job_env, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "POSITION_MANAGER_"))}
    env.update(job_env(**extra))
    return env


def test_once_runs_every_job(db, job_env, fake_bybit):
    fill(db, "BTCUSDT", "Buy", "1", "60000")
    fake_bybit.replies = [Reply(200, bybit_body({"BTCUSDT": "60500"}))]
    result = subprocess.run([str(ROOT / "bin/scheduler"), "--once"], env=_env(job_env, BYBIT_API_URL=fake_bybit.url),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == ("scheduler: refresh-prices exit 0, snapshot exit 0, validate-positions exit 0, "
                    "cleanup-snapshots exit 0")
    # the jobs' own summaries pass through
    assert "1 position(s) updated" in result.stdout and "1 snapshot(s) taken" in result.stdout
    assert db.execute("SELECT current_price FROM public.positions").fetchone()[0] == 60500


def test_runs_at_interval_and_stops_on_sigterm(db, job_env, fake_bybit):
    proc = subprocess.Popen([str(ROOT / "bin/scheduler"), "--only", "refresh-prices"],
                            env=_env(job_env, BYBIT_API_URL=fake_bybit.url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if '"job finished"' in line:
                break
        record = json.loads(line)
        assert record["job"] == "refresh-prices" and record["exit_code"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
