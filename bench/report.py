#!/usr/bin/env python3
"""Performance report: runs the benchmarks of bench/, collects their figures and writes
bench/results/report.md with matplotlib plots (PNG) beside it.

    bench/report                     # modest sizes (about 10 minutes on 2 busy cores)
    bench/report --full              # the benchmarks' own full sizes (much longer)
    bench/report --only soak,sql     # some of them; the others keep their last figures
    bench/report --soak-duration 300 # also run the soak (default: plot the last soak record)

Each benchmark runs as its own process (its --json output when it has one, else its printed
table is parsed). Figures of each run are kept in bench/results/figures.json, so a partial run
(--only) rewrites the report with the newest figures of every benchmark. The benchmarks use the
PostgreSQL / RabbitMQ of the environment (POSTGRES_*, RABBITMQ_*; they create and drop databases
and queues of their own); the soak starts private servers.

Needs matplotlib (the `bench` extra): pip install -e .[bench]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "bench" / "out"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
BENCHES = ("sql", "http", "e2e", "snapshot", "scaleout", "soak")


def log(msg: str) -> None:
    print(f"[report {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run one benchmark; its output goes to the terminal and is returned for parsing."""
    log("$ " + " ".join(argv))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out + f"\n(timed out after {timeout:.0f}s)"
    text = proc.stdout + ("\n" + proc.stderr if proc.stderr else "")
    tail = "\n".join(text.strip().splitlines()[-12:])
    log(f"exit {proc.returncode}; last lines:\n{tail}")
    return proc.returncode, text


# ------------------------------------------------------------------------------------------------
# The benchmarks: run, and return their figures
# ------------------------------------------------------------------------------------------------

def bench_sql(full: bool, ledger_sizes: list[int]) -> dict:
    """bench/sql_bench.py --json, once per ledger size: rate with an empty ledger and after growing it."""
    runs = []
    for rows in ledger_sizes:
        out = OUT / f"report_sql_{rows}.json"
        argv = [PYTHON, "bench/sql_bench.py", "--json", str(out), "--ledger-rows", str(rows)]
        if not full:
            argv += ["--n", "10000", "--pgbench-seconds", "5", "--repeat", "1"]   # k=1 runs n/10: 1,000 commits
        code, text = run(argv, 3600)
        if code != 0 or not out.exists():
            raise RuntimeError(f"sql_bench exit {code}: {text[-500:]}")
        runs.append(json.loads(out.read_text()))
    return {"runs": runs, "ledger_sizes": ledger_sizes}


def bench_http(full: bool) -> dict:
    """bench/http_bench.py writes bench/out/http_bench.json itself (no --json flag)."""
    argv = [PYTHON, "bench/http_bench.py"] + ([] if full else ["--duration", "2", "--rounds", "3"])
    target = OUT / "http_bench.json"
    before = target.stat().st_mtime if target.exists() else 0
    code, text = run(argv, 1800)
    if not target.exists() or target.stat().st_mtime <= before:
        raise RuntimeError(f"http_bench exit {code}, no new {target}: {text[-500:]}")
    figures = json.loads(target.read_text())
    figures["exit_code"] = code
    return figures


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def parse_e2e(text: str) -> dict:
    """Figures from e2e_bench.py's printed Markdown table."""
    figures: dict = {"verified": "verified:" in text and "VERIFICATION FAILED" not in text}
    patterns = {"broker": r"\| broker ceiling[^|]*\| ([\d,]+) \|",
                "direct_sql": r"\| direct SQL[^|]*\| ([\d,]+) \|",
                "e2e": r"\| end to end: [^|]*\| ([\d,]+) \(",
                "e2e_steady": r"\| end to end, steady state[^|]*\| ([\d,]+) \|"}
    for key, pattern in patterns.items():
        m = re.search(pattern, text)
        if m:
            figures[key] = _number(m.group(1))
    return figures


def bench_e2e(full: bool) -> dict:
    """bench/e2e_bench.py has no --json: its Markdown table is parsed."""
    n = 100_000 if full else 10_000
    code, text = run([PYTHON, "bench/e2e_bench.py", "--n", str(n)], 3600)
    figures = {"n": n, "exit_code": code, **parse_e2e(text)}
    if "e2e" not in figures:
        raise RuntimeError(f"e2e_bench exit {code}, no figures in its output: {text[-500:]}")
    return figures


def bench_snapshot(full: bool) -> dict:
    days = 365 if full else 14
    out = OUT / "report_snapshot.json"
    code, text = run([PYTHON, "bench/snapshot_bench.py", "--days", str(days), "--backlog-days", "3" if not full else "30",
                      "--json", str(out)], 7200)
    if code != 0 or not out.exists():
        raise RuntimeError(f"snapshot_bench exit {code}: {text[-500:]}")
    figures = json.loads(out.read_text())
    figures["days"] = days
    figures["snapshot_rows"] = days * 24 * 500
    return figures


def bench_scaleout(full: bool) -> dict:
    """bench/scaleout_bench.py has no --json: its printed lines are parsed."""
    argv = [PYTHON, "bench/scaleout_bench.py"] + ([] if full else ["--fills", "4000", "--seconds", "6"])
    code, text = run(argv, 3600)
    figures = {"exit_code": code, **parse_scaleout(text)}
    if len(figures) == 1:
        raise RuntimeError(f"scaleout_bench exit {code}, no figures in its output: {text[-500:]}")
    return figures


def parse_scaleout(text: str) -> dict:
    """Figures from scaleout_bench.py's printed lines."""
    figures: dict = {}
    m = re.search(r"1 process : [\d.]+ s, (\d+) fills/s", text)
    if m:
        figures["consumers_1"] = float(m.group(1))
    m = re.search(r"2 processes: [\d.]+ s, (\d+) fills/s", text)
    if m:
        figures["consumers_2"] = float(m.group(1))
    m = re.search(r"final positions identical: (\w+)", text)
    if m:
        figures["identical"] = m.group(1) == "True"
    for label, key in (("1 process ", "api_1"), ("2 processes", "api_2")):
        m = re.search(re.escape(label) + r": (\d+) req/s", text)
        if m:
            figures[key] = float(m.group(1))
    return figures


def bench_soak(duration: float | None) -> dict:
    """The soak's record: a new run when --soak-duration is given, else its last record."""
    record = OUT / "soak.json"
    if duration:
        code, text = run([str(ROOT / "bench" / "soak"), "--duration", str(duration), "--json", str(record)],
                         duration + 900)
        if not record.exists():
            raise RuntimeError(f"soak exit {code}, no record: {text[-500:]}")
    if not record.exists():
        raise RuntimeError("no soak record: run bench/soak, or bench/report --soak-duration 30")
    data = json.loads(record.read_text())
    data["recorded_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.stat().st_mtime))
    return data


SQL_SHORT = {"k1": "apply, commit\nevery 1", "k100": "apply, commit\nevery 100",
             "k100_pipeline": "pipelined,\ncommit every 100", "k100_apply_batch": "pm.apply_batch,\n100 per call"}
SQL_LONG = {"k1": "pm.apply_order_event, commit every execution", "k100": "pm.apply_order_event, commit every 100",
            "k100_pipeline": "the same, psycopg pipeline mode",
            "k100_apply_batch": "pm.apply_batch: 100 executions per call and commit (what the consumer sends)"}


def sql_keys(runs: list[dict]) -> list[str]:
    """The measurements of sql_bench present in every run (newer versions add some)."""
    return [k for k in SQL_SHORT if all(f"empty_{k}_per_s" in r and f"1m_{k}_per_s" in r for r in runs)]


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------

def plots(figs: dict, plt) -> dict[str, str]:
    """One PNG per figure that has data; returns {name: file name}."""
    made: dict[str, str] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(RESULTS / f"{name}.png", dpi=110)
        plt.close(fig)
        made[name] = f"{name}.png"

    def bars(ax, labels, values, colors, fmt="{:,.0f}"):
        rects = ax.bar(labels, values, color=colors)
        for rect, v in zip(rects, values):
            ax.annotate(fmt.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)

    sql = figs.get("sql", {}).get("figures")
    if sql:
        # one group of bars per run: the reference and the measurements of one run share its moment's load
        fig, ax = plt.subplots(figsize=(7, 3.6))
        keys = sql_keys(sql["runs"])
        labels = ["pgbench\nsimple-update"] + [SQL_SHORT[k] for k in keys]
        width = 0.8 / len(sql["runs"])
        for i, r in enumerate(sql["runs"]):
            values = [r["pgbench_simple_update_tps"] or 0] + [r[f"empty_{k}_per_s"] for k in keys]
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(labels))]
            rects = ax.bar(xs, values, width=width, label=f"run {i + 1}", color=("#4c72b0", "#dd8452", "#55a868")[i % 3])
            for rect, v in zip(rects, values):
                ax.annotate(f"{v:,.0f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("per second (one connection)")
        ax.set_title("SQL core: pm.apply_order_event beside pgbench (reference, same run)")
        ax.legend(fontsize=8)
        save(fig, "sql_throughput")

        # each run measures the empty ledger and the grown one minutes apart on a shared machine:
        # the ratio within one run is the figure that means something
        fig, ax = plt.subplots(figsize=(7, 3.6))
        xs = [0] + [run["ledger_rows_at_end"] for run in sql["runs"]]
        for key in sql_keys(sql["runs"]):
            label = SQL_SHORT[key].replace("\n", " ")
            ys = [100] + [100 * run[f"1m_{key}_per_s"] / run[f"empty_{key}_per_s"] for run in sql["runs"]]
            ax.plot(xs, ys, marker="o", label=label)
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("ledger rows (pm.executions)")
        ax.set_ylabel("rate, % of the same run's empty ledger")
        ax.set_ylim(0, max(150, ax.get_ylim()[1]))
        ax.set_title("Cost against ledger size: a fill's rate as history grows")
        ax.legend(fontsize=8)
        save(fig, "ledger_cost")

    http = figs.get("http", {}).get("figures")
    if http:
        for conns in (1, 8):
            rows = [r for r in http["results"] if r["connections"] == conns]
            if not rows:
                continue
            fig, ax = plt.subplots(figsize=(7, 3.6))
            bars(ax, [r["endpoint"].replace("/api/v1", "").replace(" (reference)", "\n(reference)") for r in rows],
                 [r["rps"] for r in rows], ["#999999"] + ["#55a868"] * (len(rows) - 1))
            ax.set_ylabel("requests / s")
            ax.set_title(f"API under gunicorn, {conns} connection{'s' if conns > 1 else ''}: endpoints vs SELECT 1")
            save(fig, f"api_throughput_c{conns}")
        fig, ax = plt.subplots(figsize=(7, 3.6))
        rows = [r for r in http["results"] if r["connections"] == 8] or http["results"]
        names = [r["endpoint"].replace("/api/v1", "").replace(" (reference)", "") for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["p50_ms"] for r in rows], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rows], width=0.4, label="p99")
        ax.set_xticks(list(x), names, fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(f"API latency percentiles ({rows[0]['connections']} connections)")
        ax.legend(fontsize=8)
        save(fig, "api_latency")

    e2e = figs.get("e2e", {}).get("figures")
    if e2e:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        labels = ["broker ceiling\n(no-op consumer)", "direct SQL\n(commit every 100)", "end to end\n(queue→positions)",
                  "end to end,\nsteady state"]
        values = [e2e.get("broker", 0), e2e.get("direct_sql", 0), e2e.get("e2e", 0), e2e.get("e2e_steady", 0)]
        bars(ax, labels, values, ["#999999", "#999999", "#c44e52", "#c44e52"])
        ax.set_ylabel("executions / s")
        ax.set_title(f"Pipeline: {e2e['n']:,} executions through the order queue")
        save(fig, "e2e_throughput")

    soak = figs.get("soak", {}).get("figures")
    if soak and soak.get("timeseries"):
        ts = soak["timeseries"]
        t = [p["t"] for p in ts]

        def rate(key):
            out = [None]
            for a, b in zip(ts, ts[1:]):
                if a.get(key) is None or b.get(key) is None or b["t"] <= a["t"]:
                    out.append(None)
                else:
                    out.append((b[key] - a[key]) / (b["t"] - a["t"]))
            return out

        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
        ax1.plot(t, [v if v is not None else float("nan") for v in rate("ledger_rows")], label="ledger rows applied / s", lw=1)
        ax1.plot(t, [v if v is not None else float("nan") for v in rate("published")], label="messages published / s", lw=1, alpha=0.7)
        ax1.plot(t, [v if v is not None else float("nan") for v in rate("api_requests")], label="API requests / s", lw=1, alpha=0.7)
        if any("api_non_200" in p for p in ts):
            ax1.plot(t, [v if v is not None else float("nan") for v in rate("api_non_200")],
                     label="API answers other than 200 / s (503)", lw=1, color="red")
        ax1.set_ylabel("per second")
        ax1.set_ylim(0, ax1.get_ylim()[1] * 1.3)          # headroom for the legend
        ax1.legend(fontsize=7, loc="upper left", ncol=2)
        depth = [(p["order_depth"] + p["position_depth"]) if p.get("order_depth") is not None else float("nan") for p in ts]
        ax2.plot(t, depth, label="ready messages (order + position queues)", color="#8172b2", lw=1)
        ax2.plot(t, [p["outbox_pending"] if p.get("outbox_pending") is not None else float("nan") for p in ts],
                 label="outbox rows not yet relayed", color="#937860", lw=1)
        ax2.set_ylabel("backlog")
        ax2.set_xlabel("seconds since the traffic started")
        ax2.set_ylim(0, max(10, ax2.get_ylim()[1]) * 1.5)   # headroom for the fault labels
        ax2.legend(fontsize=7, loc="center left")
        colors = {"consumer_kill": "red", "relay_kill": "orange", "api_worker_kill": "green",
                  "rabbitmq_restart": "purple", "postgres_restart": "black"}
        for f in soak["faults"]:
            if f.get("t_start") is None:
                continue
            for ax in (ax1, ax2):
                ax.axvspan(f["t_start"], max(f["t_end"] or f["t_start"], f["t_start"] + 0.3),
                           color=colors.get(f["kind"], "grey"), alpha=0.2)
            ax2.annotate(f["kind"].replace("_", " "), (f["t_start"], ax2.get_ylim()[1] * 0.97), fontsize=7,
                         rotation=90, va="top", ha="right", color=colors.get(f["kind"], "grey"))
        ax1.set_title(f"Soak: {soak['duration']:.0f} s of traffic with faults (shaded: fault in progress)")
        save(fig, "soak_timeline")

    snap = figs.get("snapshot", {}).get("figures")
    if snap:
        keys = [("fills_baseline", "fills alone"), ("fills_during_cleanup", "during cleanup"),
                ("fills_during_backlog_cleanup", "during backlog cleanup"), ("fills_during_validation", "during validation")]
        rows = [(label, snap[k]) for k, label in keys if isinstance(snap.get(k), dict)]
        if rows:
            fig, ax = plt.subplots(figsize=(7, 3.6))
            x = range(len(rows))
            ax.bar([i - 0.2 for i in x], [r["p50"] * 1000 for _, r in rows], width=0.4, label="p50")
            ax.bar([i + 0.2 for i in x], [r["p99"] * 1000 for _, r in rows], width=0.4, label="p99")
            ax.set_xticks(list(x), [label for label, _ in rows], fontsize=8)
            ax.set_ylabel("fill latency, ms")
            ax.set_title(f"Fill latency while jobs run ({snap['snapshot_rows']:,} snapshot rows)")
            ax.legend(fontsize=8)
            save(fig, "jobs_fill_latency")
    return made


# ------------------------------------------------------------------------------------------------
# The Markdown report
# ------------------------------------------------------------------------------------------------

def markdown(figs: dict, made: dict[str, str], full: bool) -> str:
    lines = ["# Performance report", "",
             f"Generated by `bench/report{' --full' if full else ''}` on {os.cpu_count()} CPU(s). "
             "Every figure below comes from the benchmark named beside it; each benchmark's own "
             "docstring says exactly what it measures. The machine is shared (other processes were "
             "running), so absolute figures are noisy: the ratios to the reference measured in the "
             "same run are the meaningful part.", ""]

    def section(name: str, title: str) -> dict | None:
        entry = figs.get(name)
        lines.extend([f"## {title}", ""])
        if not entry:
            lines.extend(["(not run yet)", ""])
            return None
        lines.append(f"_{entry.get('command', '')}: measured {entry.get('at', '?')}_")
        lines.append("")
        if entry.get("error"):
            lines.extend([f"**Did not complete**: `{entry['error'][:300]}`", ""])
        return entry.get("figures")

    def image(name: str, alt: str) -> None:
        if name in made:
            lines.extend([f"![{alt}]({made[name]})", ""])

    sql = section("sql", "SQL core against pgbench (bench/sql_bench.py)")
    if sql:
        runs = sql["runs"]
        lines += ["| measurement (one connection), per second (x pgbench of the same run) | "
                  + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |",
                  "|---|" + "---:|" * len(runs)]
        lines.append("| pgbench `-b simple-update` (reference: one small read-write transaction) | "
                     + " | ".join(f"{r['pgbench_simple_update_tps'] or 0:,.0f}" for r in runs) + " |")
        for key in sql_keys(runs):
            label = SQL_LONG[key]
            cells = []
            for r in runs:
                v, ref = r[f"empty_{key}_per_s"], r["pgbench_simple_update_tps"]
                cells.append(f"{v:,.0f} ({v / ref:.2f}x)" if ref else f"{v:,.0f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        image("sql_throughput", "SQL core throughput beside pgbench")
        lines += ["Cost against ledger size: each run measures two databases in turns, one starting with an "
                  "empty ledger and one whose ledger was grown by set-based inserts; per second, and in "
                  "parentheses as a share of the same run's empty-ledger rate:", "",
                  "| ledger rows | " + " | ".join(SQL_SHORT[k].replace("\n", " ") for k in sql_keys(sql["runs"])) + " |",
                  "|---:|" + "---:|" * len(sql_keys(sql["runs"]))]
        for x in sql["runs"]:
            lines.append("| 0 | " + " | ".join(f"{x[f'empty_{k}_per_s']:,.0f}" for k in sql_keys(sql["runs"])) + " |")
            lines.append(f"| {x['ledger_rows_at_end']:,} | " + " | ".join(
                f"{x[f'1m_{k}_per_s']:,.0f} ({100 * x[f'1m_{k}_per_s'] / x[f'empty_{k}_per_s']:.0f}%)"
                for k in sql_keys(sql["runs"])) + " |")
        lines.append("")
        image("ledger_cost", "rate against ledger size")

    http = section("http", "REST API against SELECT 1 (bench/http_bench.py)")
    if http:
        lines += [f"{http['positions']} open positions; gunicorn {http['workers']} workers x {http['threads']} threads; "
                  f"client {http['client']}; median of {http['rounds']} rounds of {http['duration']:g} s.", "",
                  "| endpoint | connections | req/s | p50 ms | p99 ms | vs SELECT 1 |", "|---|---:|---:|---:|---:|---:|"]
        for r in http["results"]:
            share = f"{r['share']:.0f}%" if "share" in r else ""
            lines.append(f"| `{r['endpoint']}` | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {share} |")
        lines.append("")
        image("api_throughput_c8", "API throughput, 8 connections")
        image("api_throughput_c1", "API throughput, 1 connection")
        image("api_latency", "API latency percentiles")

    e2e = section("e2e", "Event pipeline end to end (bench/e2e_bench.py)")
    if e2e:
        lines += ["| measurement | executions/s |", "|---|---:|",
                  f"| broker ceiling: a pika consumer that only acknowledges | {e2e.get('broker', 0):,.0f} |",
                  f"| direct SQL: pm.apply_order_event, one connection, commit every 100 | {e2e.get('direct_sql', 0):,.0f} |",
                  f"| end to end: queue → consumer → positions (relay running) | {e2e.get('e2e', 0):,.0f} |",
                  f"| end to end, steady state | {e2e.get('e2e_steady', 0):,.0f} |", "",
                  f"N = {e2e['n']:,}; every position verified equal to the Python fold: {'yes' if e2e.get('verified') else 'NO'}.", ""]
        image("e2e_throughput", "pipeline throughput beside its references")

    scale = section("scaleout", "Scaling out on one machine (bench/scaleout_bench.py)")
    if scale:
        lines += ["| measurement | 1 process | 2 processes |", "|---|---:|---:|"]
        if "consumers_1" in scale:
            lines.append(f"| order consumer, fills/s | {scale['consumers_1']:,.0f} | {scale.get('consumers_2', 0):,.0f} |")
        if "api_1" in scale:
            lines.append(f"| API (gunicorn processes), req/s | {scale['api_1']:,.0f} | {scale.get('api_2', 0):,.0f} |")
        lines += ["", f"Final positions identical with one or two consumers: {scale.get('identical')}.", ""]

    snap = section("snapshot", "Snapshots, retention and validation at scale (bench/snapshot_bench.py)")
    if snap:
        lines += [f"{snap['snapshot_rows']:,} snapshot rows ({snap['days']} days of hourly snapshots of 500 positions).", "",
                  "| operation | seconds |", "|---|---:|"]
        for key, label in (("bin_snapshot_seconds", "bin/snapshot (500 positions)"),
                           ("cleanup_seconds", "bin/cleanup-snapshots, one day"),
                           ("backlog_cleanup_seconds", "bin/cleanup-snapshots, backlog"),
                           ("validate_seconds", "bin/validate-positions (500)")):
            if isinstance(snap.get(key), (int, float)):
                lines.append(f"| {label} | {snap[key]:.2f} |")
        lines.append("")
        image("jobs_fill_latency", "fill latency while jobs run")

    soak = section("soak", "Soak under injected faults (bench/soak)")
    if soak:
        lines += [f"{soak['duration']:.0f} s of traffic, recorded {soak.get('recorded_at', '?')}: "
                  f"**{'PASSED' if soak['passed'] else 'FAILED'}**.", "",
                  "| fault | at s | took s | peak backlog | back to ~0 after s | detail |", "|---|---:|---:|---:|---:|---|"]
        for f in soak["faults"]:
            took = f"{f['t_end'] - f['t_start']:.1f}" if f.get("t_end") is not None and f.get("t_start") is not None else "-"
            rec = "-" if f.get("recovered_after") is None else f"{f['recovered_after']:.1f}"
            peak = "-" if f.get("peak_backlog") is None else f"{f['peak_backlog']}"
            lines.append(f"| {f['kind']} | {f.get('t_start') or 0:.0f} | {took} | {peak} | {rec} | {f['detail']} |")
        lines += ["", "Backlog: ready messages on the order and position queues plus outbox rows not yet relayed, "
                  "sampled every second."]
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        for name, ok, detail in soak["checks"]:
            lines.append(f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |")
        api = soak.get("api", {})
        lines += ["", f"API during the soak: {api.get('requests', 0):,} requests, p50 {api.get('p50_ms', 0):.1f} ms, "
                  f"p99 {api.get('p99_ms', 0):.1f} ms.", ""]
        image("soak_timeline", "throughput over time through the soak, faults marked")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/report", description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the benchmarks' full sizes (default: modest sizes)")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--ledger-sizes", default=None,
                    help="ledger rows for the cost-vs-size runs of sql_bench (default 100000,1000000; --full 1000000,3000000)")
    ap.add_argument("--soak-duration", type=float, default=None,
                    help="run the soak for this many seconds (default: use its last record, bench/out/soak.json)")
    ap.add_argument("--plots-only", action="store_true", help="rewrite the report from bench/results/figures.json")
    args = ap.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench/report needs matplotlib, the `bench` extra: .venv/bin/pip install -e .[bench]", file=sys.stderr)
        return 2

    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    store = RESULTS / "figures.json"
    figs = json.loads(store.read_text()) if store.exists() else {}
    wanted = [b for b in args.only.split(",") if b and b not in args.skip.split(",")]
    unknown = set(wanted) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {','.join(BENCHES)}")
    sizes = [int(x) for x in (args.ledger_sizes or ("1000000,3000000" if args.full else "100000,1000000")).split(",")]
    runners = {"sql": lambda: bench_sql(args.full, sizes), "http": lambda: bench_http(args.full),
               "e2e": lambda: bench_e2e(args.full), "snapshot": lambda: bench_snapshot(args.full),
               "scaleout": lambda: bench_scaleout(args.full), "soak": lambda: bench_soak(args.soak_duration)}
    failed = []
    if not args.plots_only:
        for name in wanted:
            started = time.monotonic()
            entry = {"at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "command": f"bench/report --only {name}{' --full' if args.full else ''}"}
            if name == "soak":
                entry["command"] = (f"bench/soak --duration {args.soak_duration:g}" if args.soak_duration
                                    else "the last bench/soak record (bench/out/soak.json)")
            try:
                entry["figures"] = runners[name]()
            except Exception as exc:  # noqa: BLE001 - one benchmark failing does not lose the others
                log(f"{name}: {exc}")
                entry["error"] = str(exc)
                failed.append(name)
                if figs.get(name, {}).get("figures"):       # keep the last good figures, say so
                    entry["figures"] = figs[name]["figures"]
                    entry["error"] += f" (figures shown are from {figs[name].get('at')})"
            entry["seconds"] = round(time.monotonic() - started)
            figs[name] = entry
            store.write_text(json.dumps(figs, indent=1, default=str))
    made = plots(figs, plt)
    (RESULTS / "report.md").write_text(markdown(figs, made, args.full))
    log(f"wrote {RESULTS / 'report.md'} and {len(made)} plots")
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
