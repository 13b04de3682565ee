"""bench/report: the printed tables of the benchmarks without --json are parsed into figures, and
the report (Markdown + plots) is written from stored figures."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402

E2E_OUTPUT = """
| measurement (N = 10,000, 50 assets) | executions/s |
|---|---|
| broker ceiling: no-op pika consumer, acks only | 16,366 |
| direct SQL: pm.apply_order_event, one connection, commit every 100 | 1,024 |
| end to end: queue -> consumer -> positions (relay running) | 1,106 (108% of direct SQL) |
| end to end, steady state (first to last commit) | 1,246 |

verified: 10,000 executions in the ledger, every position equals the Python fold (size, average, realized; exact), no dead letters
"""

SCALEOUT_OUTPUT = """machine: 2 CPU(s)
consumers: 4000 fills pre-loaded on a fresh order queue, bin/consume order
   1 process : 4.5 s, 895 fills/s
   2 processes: 2.7 s, 1459 fills/s  (x1.63)
   final positions identical: True
API: 16 keep-alive clients for 6 s each, 70% GET /positions/{asset}, 30% GET /portfolio/exposure; 2 gunicorn workers per process
   1 process : 1785 req/s (x1.00), p50 8.6 ms, p95 16.3 ms, p99 25.2 ms, 0 errors
   2 processes: 2401 req/s (x1.34), p50 2.3 ms, p95 16.1 ms, p99 113.4 ms, 0 errors
"""


def test_e2e_table_is_parsed():
    assert report.parse_e2e(E2E_OUTPUT) == {"verified": True, "broker": 16366.0, "direct_sql": 1024.0,
                                            "e2e": 1106.0, "e2e_steady": 1246.0}
    assert report.parse_e2e(E2E_OUTPUT + "\nVERIFICATION FAILED (1):")["verified"] is False


def test_scaleout_lines_are_parsed():
    assert report.parse_scaleout(SCALEOUT_OUTPUT) == {"consumers_1": 895.0, "consumers_2": 1459.0, "identical": True,
                                                      "api_1": 1785.0, "api_2": 2401.0}
    assert report.parse_scaleout("nothing useful") == {}


def test_report_from_the_committed_figures(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is the bench extra")
    figs = json.loads((ROOT / "bench" / "results" / "figures.json").read_text())
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    made = report.plots(figs, plt)
    text = report.markdown(figs, made, full=False)
    for name in ("sql_throughput", "ledger_cost", "api_throughput_c8", "api_latency", "e2e_throughput", "soak_timeline"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in text
    assert "## Soak under injected faults" in text and "PASS" in text
