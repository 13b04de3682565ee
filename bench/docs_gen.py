#!/usr/bin/env python3
"""The generated parts of the documentation. From bench/results/*.json and nothing else:
docs/performance.md, and the table of README.md between `<!-- perf-table:start -->` and
`<!-- perf-table:end -->`; each figure stands beside the reference measured in the same run and the
command that reproduces it. From app/sqlstates.py (the one classification of database errors): the
README's table between `<!-- sqlstate-table:start -->` and `<!-- sqlstate-table:end -->`. Nobody
edits those by hand: tests/bench/test_report.py fails when they differ from what this module makes.

    bench/report --no-plots       # rewrite both (and bench/results/report.md), no plots
    bench/report --check          # exit 1 when either differs from what the results give
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PERFORMANCE_MD = ROOT / "docs" / "performance.md"
README = ROOT / "README.md"
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
SQLSTATE_START, SQLSTATE_END = "<!-- sqlstate-table:start -->", "<!-- sqlstate-table:end -->"

# Benchmarks in the order the documents show them: result name -> script.
SCRIPTS = {"sql": "sql_bench.py", "e2e": "e2e_bench.py", "latency": "latency_bench.py", "http": "http_bench.py",
           "scaleout": "scaleout_bench.py", "snapshot": "snapshot_bench.py", "extras": "extras_bench.py", "soak": "soak.py"}
# The README's table: (result, figure key, short name).
# (benchmark, figure key, row label, target or None). A target is (measure, at least|at most,
# bound): measure "ratio" is the figure over its same-run reference, "value" the figure itself.
HEADLINE = [
    ("sql", "empty_k100", "`pm.apply_order_event`, one round trip per call, commit every 100",
     ("ratio", "at least", 2.0)),
    ("sql", "empty_k100_apply_batch", "`pm.apply_batch` of 100 (the consumers' path)", None),
    ("sql", "ties_equal", "2,000 executions of one position sharing one timestamp", ("ratio", "at least", 0.5)),
    ("e2e", "e2e", "end to end: queue -> consumer -> positions, relay running", ("ratio", "at least", 0.3)),
    ("latency", "idle_execution_event_p99", "latency p99, idle: execution published -> `position_updated` received",
     ("value", "at most", 50.0)),
    ("latency", "load_execution_event_p99", "latency p99 at half the capacity measured in the same run, same path",
     ("value", "at most", 250.0)),
    ("http", "c8_positions_asset_rps", "`GET /api/v1/positions/{asset}`, 8 connections", None),
    ("http", "c8_positions_rps", "`GET /api/v1/positions` (500 positions), 8 connections", ("ratio", "at least", 0.5)),
    ("http", "list_render_ms", "SQL rendering those 500 positions, in the server", ("value", "at most", 5.0)),
    ("http", "c8_portfolio_rps", "`GET /api/v1/portfolio`, 8 connections", None),
    ("snapshot", "fills_during_cleanup", "fill latency p99 while retention deletes a day", None),
    ("soak", "api_p99", "API p99 under injected faults", None),
]


def load_results(directory: Path = RESULTS) -> dict[str, dict]:
    """Every result file, by benchmark name."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def summary(script: str) -> str:
    """The first line of a benchmark's docstring: what it measures."""
    doc = ast.get_docstring(ast.parse((ROOT / "bench" / script).read_text())) or ""
    return doc.splitlines()[0].rstrip(".") if doc else script


def number(value, unit: str = "") -> str:
    """A figure as people read it: rates and counts whole, times with the precision they carry."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    v = float(value)
    if unit in ("ms", "ms/request", "s"):
        return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,.0f}"


def ratio_value(fig: dict) -> float | None:
    """The figure over its same-run reference, None without one."""
    ref = fig.get("reference")
    if not ref or not ref.get("value") or fig.get("value") is None:
        return None
    return fig["value"] / ref["value"]


def ratio(fig: dict) -> str:
    value = ratio_value(fig)
    return "" if value is None else f"{value:.2f}x"


def with_unit(value, unit: str) -> str:
    text = number(value, unit)
    return text if text == "-" else f"{text} {unit}"


def reference_cell(fig: dict) -> str:
    ref = fig.get("reference")
    if not ref:
        return ""
    return f"{ref['label']}: {with_unit(ref['value'], ref['unit'])}"


def find(results: dict, name: str, key: str) -> dict | None:
    for fig in results.get(name, {}).get("figures", []):
        if fig["key"] == key:
            return fig
    return None


def target_cell(fig: dict, target: tuple | None) -> str:
    """'at least 2x: **missed**', 'at most 50 ms: met', or '' without a target (or a figure to judge)."""
    if target is None:
        return ""
    measure, bound_kind, bound = target
    if measure == "ratio":
        value = ratio_value(fig)
        text = f"{bound_kind} {bound:g}x"
    else:
        value = fig.get("value")
        text = f"{bound_kind} {bound:g} {fig['unit']}"
    if value is None:
        return text
    met = value >= bound if bound_kind == "at least" else value <= bound
    return f"{text}: {'met' if met else '**missed**'}"


def readme_table(results: dict) -> str:
    lines = ["| what | figure | reference, measured in the same run | ratio | target | reproduce |",
             "|---|---:|---|---:|---|---|"]
    for name, key, what, target in HEADLINE:
        fig = find(results, name, key)
        if fig is None:
            continue
        run = results[name]
        failed = " (run FAILED its checks)" if run.get("passed") is False else ""
        lines.append(f"| {what}{failed} | {with_unit(fig['value'], fig['unit'])} | {reference_cell(fig)} | "
                     f"{ratio(fig)} | {target_cell(fig, target)} | `{run['command'].split(' --')[0]}` |")
    return "\n".join(lines) + "\n"


def performance_md(results: dict) -> str:
    out = ["# Performance", "",
           "<!-- Generated by bench/report (bench/docs_gen.py) from bench/results/*.json: do not edit. -->", "",
           "Every figure below comes from one result file of `bench/results/`, written by the benchmark that",
           "measured it; `bench/report` turns those files into this page, the table of the README and",
           "[bench/results/report.md](../bench/results/report.md) (plots and per-run detail). The figures were",
           "measured on a small machine shared with other work, so absolute rates move with the load of the",
           "moment: read each figure against its reference, measured in the same run under the same load.",
           "The command under each heading repeats the run (`bench/run NAME`, or `bench/soak`) and rewrites its",
           "file; `bench/report` then regenerates the documents.", ""]
    for name, script in SCRIPTS.items():
        run = results.get(name)
        out += [f"## {summary(script)}", ""]
        if run is None:
            out += [f"Not measured yet: `bench/run {name}` writes `bench/results/{name}.json`.", ""]
            continue
        params = ", ".join(f"{k} {v}" for k, v in run["params"].items())
        machine = run.get("machine") or {}
        facts = [f"{machine.get('cores', '?')} cores"]
        if machine.get("cpu"):
            facts.append(f"{machine['cpu']}, {machine['python_loop_ns']} ns per Python loop iteration")
        if machine.get("load_average"):
            facts.append(f"load average {machine['load_average'][0]:.1f} at the end")
        if run.get("code"):
            facts.append(f"code {run['code']}")
        out += [f"Reproduce: `{run['command']}` (file `bench/results/{name}.json`; {', '.join(facts)}).", "",
                f"Parameters: {params}."]
        if run.get("passed") is not None:
            out.append("Its checks: " + ("all passed." if run["passed"] else "**FAILED**."))
        if run.get("note"):
            out.append(f"Note: {run['note']}.")
        out += ["", "| figure | value | reference, measured in the same run | ratio |", "|---|---:|---|---:|"]
        for fig in run["figures"]:
            extra = [f"{k.replace('_ms', '')} {number(v, 'ms')} ms" for k, v in fig.items()
                     if k.endswith("_ms") and v is not None]
            label = fig["label"] + (f" ({', '.join(extra)})" if extra else "")
            out.append(f"| {label} | {with_unit(fig['value'], fig['unit'])} | {reference_cell(fig)} | {ratio(fig)} |")
        out.append("")
    return "\n".join(out)


def sqlstate_table() -> str:
    """One row per class of app.sqlstates: its SQLSTATEs, meaning, HTTP status, consumer action, job exit."""
    from app import sqlstates

    states: dict[str, list[str]] = {cls.name: [] for cls in sqlstates.CLASSES}
    for state, cls in sqlstates.BY_SQLSTATE.items():
        states[cls.name].append(f"`{state}`")
    for prefix, cls in sqlstates.BY_SQLSTATE_CLASS.items():
        states[cls.name].append(f"`{prefix}xxx`")
    states[sqlstates.UNAVAILABLE.name].append("no connection")
    states[sqlstates.UNKNOWN.name].append("any other")
    lines = ["| SQLSTATE | meaning | HTTP status | consumer | job exit |", "|---|---|---|---|---:|"]
    for cls in sqlstates.CLASSES:
        lines.append(f"| {', '.join(states[cls.name])} | {cls.meaning} | {cls.http_status} `{cls.error_code}` | "
                     f"{cls.consumer} | {cls.job_exit} |")
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str, table: str, start: str = START, end: str = END) -> str:
    """README text with a generated table between its markers (which must be there, once)."""
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise ValueError(f"README.md needs exactly one {start} ... {end} block")
    head, rest = readme.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{table}{end}{tail}"


def generated(results: dict | None = None) -> dict[Path, str]:
    """{path: the text it must have}."""
    results = load_results() if results is None else results
    readme = readme_with_table(README.read_text(), readme_table(results))
    readme = readme_with_table(readme, sqlstate_table(), SQLSTATE_START, SQLSTATE_END)
    return {PERFORMANCE_MD: performance_md(results), README: readme}


def write() -> list[Path]:
    changed = []
    for path, text in generated().items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def stale() -> list[Path]:
    return [path for path, text in generated().items() if not path.exists() or path.read_text() != text]
