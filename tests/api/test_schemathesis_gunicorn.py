"""`st run` (schemathesis' own command line) against the real gunicorn and a real database, as a
user would run it from the repository: every check (all are on by default; the project's
schemathesis.toml turns one off for one operation and says why), every operation of
app/openapi.yaml including the live stream (whose events are validated against the document),
generated valid and invalid requests, and schemathesis' stateful links. It must find nothing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.api.conftest import API_KEY, ROOT, server_environ
from tests.sql.calls import fill, set_prices

EXAMPLES = os.environ.get("PM_SCHEMATHESIS_EXAMPLES", "15")


def test_st_run_with_every_check_finds_nothing(start_server, settings, db, tmp_path):
    fill(db, "BTCUSDT", "Buy", "1.5", "50000")
    fill(db, "ETHUSDT", "Sell", "2", "3000")
    fill(db, "XRPUSDT", "Buy", "100", "0.5", mode="hedge", position_idx=1)
    set_prices(db, {"BTCUSDT": "50100", "ETHUSDT": "2900"})
    server = start_server(server_environ(settings, POSITION_MANAGER_API_WORKERS="2", POSITION_MANAGER_API_THREADS="4",
                                         POSITION_MANAGER_STREAM_MAX_SECONDS="1", POSITION_MANAGER_STREAM_HEARTBEAT="1",
                                         POSITION_MANAGER_RATE_LIMIT_DEFAULT="1000000"))
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [str(st), "run", server.url + "/openapi.yaml", "-H", f"X-API-Key: {API_KEY}",
         "--max-examples", EXAMPLES, "--request-timeout", "15", "--workers", "1", "--seed", "1",
         "--generation-codec", "ascii", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=ROOT)   # with the project's schemathesis.toml
    (tmp_path / "st-output.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout, result.stdout[-3000:]
