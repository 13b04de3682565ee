"""bench/run latency at a tiny size, against the test's PostgreSQL and RabbitMQ: every input of every
kind is seen at both ends (row and event) in both phases, the load is paced at the asked share of the
capacity measured in the same run, nothing is lost, and the report draws its plots from the result.
The mechanics only: no latency is asserted."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench import common, docs_gen, report
from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.pipeline.conftest import RABBIT_HOST, RABBIT_PORT

SAMPLES = 4
KINDS = ("execution", "position", "price")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency") / "latency.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSITION_MANAGER_", "POSTGRES_", "RABBITMQ_"))}
    env.update(POSTGRES_HOST=PG_HOST, POSTGRES_PORT=str(PG_PORT), POSTGRES_USER=PG_USER,
               RABBITMQ_HOST=RABBIT_HOST, RABBITMQ_PORT=str(RABBIT_PORT), POSITION_MANAGER_LOG_LEVEL="WARNING")
    proc = subprocess.run([str(common.ROOT / "bench" / "run"), "latency", "--samples", str(SAMPLES), "--burst", "300",
                           "--spacing", "0.01", "--warmup", "0.3", "--load-fraction", "0.25", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_result_has_the_shape_of_every_benchmark(run):
    assert run["benchmark"] == "latency" and run["command"].endswith(" --seed 7")
    assert run["command"].startswith(("bench/run latency ", "POSITION_MANAGER_LOG_LEVEL=WARNING bench/run latency "))
    assert "--load-fraction 0.25" in run["command"] and run["passed"] is True
    assert run["machine"]["cores"] >= 1
    keys = [f["key"] for f in run["figures"]]
    assert len(set(keys)) == len(keys)
    for fig in run["figures"]:
        assert fig["value"] is not None and fig["value"] >= 0, fig
        if fig["key"].endswith("_p99"):
            assert fig["unit"] == "ms" and fig["p50_ms"] <= fig["value"] <= fig["max_ms"], fig
            assert fig["reference"]["value"] > 0 and fig["reference"]["unit"] == "ms", fig


def test_every_input_is_seen_at_both_ends_in_both_phases(run):
    detail = run["detail"]
    assert detail["problems"] == []
    for phase in ("idle", "load"):
        for kind in KINDS:
            for end in ("row", "event"):
                samples = detail["samples_ms"][phase][kind][end]
                assert len(samples) == SAMPLES and all(ms > 0 for ms in samples), (phase, kind, end)
                assert detail["summary"][phase][kind][end]["n"] == SAMPLES
        assert len(detail["http_samples_ms"][phase]) == SAMPLES
    assert detail["listen_query_ms"]["n"] > 0 and detail["events_seen_by_watcher"] > 0


def test_the_load_is_paced_at_the_asked_share_of_the_capacity_of_the_same_run(run):
    detail = run["detail"]
    assert detail["capacity"]["n"] == 300 and detail["capacity"]["rate"] > 0
    assert detail["background_target_rate"] == pytest.approx(detail["capacity"]["rate"] * 0.25)
    assert detail["background_rate"] > 0
    background = docs_gen.find({"latency": run}, "latency", "background")
    assert background["reference"]["value"] == detail["capacity"]["rate"]
    # the load figures are read against the idle figures of the same run
    load = docs_gen.find({"latency": run}, "latency", "load_price_event_p99")
    assert load["reference"]["value"] == detail["summary"]["idle"]["price"]["event"]["p99"]


def test_the_report_draws_and_tabulates_it(run, tmp_path):
    results = {"latency": run}
    text = report.markdown(results)
    assert "| idle | execution | row | 4 |" in text
    page = docs_gen.performance_md(results)
    assert "position_updated event received, p99" in page and run["command"] in page
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is the bench extra")
    made = report.plots(results, plt, out=tmp_path)
    assert made == [f"latency_{kind}" for kind in KINDS] == report.plot_names(results)
    for name in made:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000 and f"({name}.png)" in text
