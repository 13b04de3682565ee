"""Every benchmark runs (at tiny sizes, against the test's PostgreSQL and RabbitMQ) and writes the
result file bench/report reads; the benchmarks' statements are all in bench/queries.sql and used."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from app import db as appdb
from bench import common
from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.pipeline.conftest import RABBIT_HOST, RABBIT_PORT

TINY = {
    "sql": ["--n", "200", "--ledger-rows", "2000", "--pgbench-seconds", "1", "--repeat", "1"],
    "e2e": ["--n", "300", "--assets", "5"],
    "http": ["--duration", "0.3", "--rounds", "1", "--positions", "20", "--workers", "1", "--threads", "2"],
    "snapshot": ["--days", "4", "--backlog-days", "1"],
    "scaleout": ["--fills", "200", "--seconds", "0.5", "--clients", "2", "--workers", "1"],
    "extras": ["--holdings", "100", "--fills", "20", "--writers", "2"],
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_and_writes_its_result(name, tmp_path):
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSITION_MANAGER_", "POSTGRES_", "RABBITMQ_"))}
    env.update(POSTGRES_HOST=PG_HOST, POSTGRES_PORT=str(PG_PORT), POSTGRES_USER=PG_USER,
               RABBITMQ_HOST=RABBIT_HOST, RABBITMQ_PORT=str(RABBIT_PORT), POSITION_MANAGER_LOG_LEVEL="WARNING")
    proc = subprocess.run([str(common.ROOT / "bench" / "run"), name, *TINY[name], "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(out.read_text())
    assert run["benchmark"] == name and run["command"].startswith(f"bench/run {name} ")
    assert run["machine"]["cores"] >= 1 and run["passed"] in (True, None)
    for fig in run["figures"]:
        assert fig["value"] is None or fig["value"] >= 0, fig
        if fig["reference"]:
            assert fig["reference"]["value"] > 0, fig
    assert any(f["reference"] for f in run["figures"]) or name == "extras"


def test_every_benchmark_statement_is_used_and_none_is_left_in_the_service_queries():
    names = set(common.queries())
    sources = "\n".join(p.read_text() for p in (common.ROOT / "bench").glob("*.py"))
    called = set(re.findall(r"""\bq\(["']([a-z0-9_]+)["']\)""", sources))
    quoted = set(re.findall(r"""["']([a-z0-9_]+)["']""", sources))
    assert names - quoted == set(), "statements of bench/queries.sql nothing uses"
    service_names = set(appdb.queries())     # the service's own statements, which the benchmarks measure
    assert called - names - service_names == set(), "statements used but in no queries file"
    service = (common.ROOT / "app" / "queries.sql").read_text()
    assert not any(f"-- name: {n}" in service for n in names)
