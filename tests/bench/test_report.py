"""bench/report: the report, its plots and the generated documents come from the result files
alone; the committed documents are exactly what the committed results give."""
from __future__ import annotations

import json

import pytest

from bench import docs_gen, report

RESULTS = docs_gen.load_results()


def test_every_committed_result_has_the_shape_the_report_reads():
    assert set(RESULTS) >= {"sql", "http", "e2e", "snapshot", "scaleout", "soak"}
    for name, run in RESULTS.items():
        assert run["benchmark"] == name
        assert run["command"].startswith(("bench/run ", "bench/soak", "POSITION_MANAGER_")), run["command"]
        assert run["machine"]["cores"] >= 1 and isinstance(run["params"], dict)
        for fig in run["figures"]:
            assert {"key", "label", "value", "unit", "reference"} <= set(fig), (name, fig)
            if fig["reference"] is not None:
                assert {"label", "value", "unit"} <= set(fig["reference"]), (name, fig)
        assert len({f["key"] for f in run["figures"]}) == len(run["figures"]), name


def test_the_generated_documents_are_what_the_committed_results_give():
    """docs/performance.md, the README's performance table and bench/results/report.md are written by
    bench/report from bench/results/*.json: an edit by hand (or a result without its documents) fails."""
    stale = [str(path) for path, text in report.rendered(RESULTS).items() if path.read_text() != text]
    assert not stale, f"run bench/report --no-plots to regenerate: {stale}"


def test_every_headline_figure_is_in_the_readme_with_its_reference_and_benchmark():
    table = docs_gen.readme_table(RESULTS)
    readme = docs_gen.README.read_text()
    assert table in readme
    for name, key, what, _target in docs_gen.HEADLINE:
        fig = docs_gen.find(RESULTS, name, key)
        assert fig is not None, (name, key)
        row = next(line for line in table.splitlines() if line.startswith(f"| {what}"))
        # the row names the benchmark; its full command (which repeats the run) is on the performance page
        command = RESULTS[name]["command"]
        assert docs_gen.number(fig["value"], fig["unit"]) in row and f"`{command.split(' --')[0]}`" in row
        assert command in docs_gen.PERFORMANCE_MD.read_text()
        if fig["reference"]:
            assert docs_gen.number(fig["reference"]["value"], fig["reference"]["unit"]) in row
            assert docs_gen.ratio(fig) in row


def test_a_target_is_judged_from_the_figure_of_the_run():
    """The README's target column says met or missed from the result itself: a ratio against the
    same-run reference, or the value; a row without a target says nothing."""
    fig = {"value": 3.0, "unit": "executions/s", "reference": {"value": 2.0, "unit": "transactions/s"}}
    assert docs_gen.target_cell(fig, ("ratio", "at least", 2.0)) == "at least 2x: **missed**"
    assert docs_gen.target_cell(fig, ("ratio", "at least", 1.5)) == "at least 1.5x: met"
    latency = {"value": 250.0, "unit": "ms", "reference": None}
    assert docs_gen.target_cell(latency, ("value", "at most", 250.0)) == "at most 250 ms: met"
    assert docs_gen.target_cell({**latency, "value": 250.1}, ("value", "at most", 250.0)) == "at most 250 ms: **missed**"
    assert docs_gen.target_cell(fig, None) == ""


def test_a_changed_result_changes_the_documents(tmp_path):
    """The documents follow the results: a figure changed in a result file shows in the table and
    the page, its ratio recomputed."""
    results = json.loads(json.dumps(RESULTS))
    fig = docs_gen.find(results, "e2e", "e2e")
    fig["value"] = fig["reference"]["value"] * 3.25
    assert "3.25x" in docs_gen.readme_table(results) and "3.25x" in docs_gen.performance_md(results)
    assert docs_gen.readme_table(results) != docs_gen.readme_table(RESULTS)


def test_the_readme_markers_are_required():
    with pytest.raises(ValueError):
        docs_gen.readme_with_table("no markers here", "| table |\n")
    text = f"before\n{docs_gen.START}\nold\n{docs_gen.END}\nafter\n"
    assert docs_gen.readme_with_table(text, "| new |\n") == f"before\n{docs_gen.START}\n| new |\n{docs_gen.END}\nafter\n"


def test_plots_from_the_committed_results(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is the bench extra")
    made = report.plots(RESULTS, plt, out=tmp_path)
    assert made == report.plot_names(RESULTS)
    text = report.markdown(RESULTS)
    for name in made:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in text
