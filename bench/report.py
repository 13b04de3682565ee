#!/usr/bin/env python3
"""Performance report: bench/results/report.md and its plots, docs/performance.md and the README's
performance table, all from the result files bench/results/*.json (nothing else is read).

    bench/report                      # rewrite the report, the plots and the documents from the results
    bench/report --run sql,e2e        # first run those benchmarks (modest sizes) and keep their results
    bench/report --run all --full     # every benchmark at its own full size (long)
    bench/report --run soak --soak-duration 300
    bench/report --check              # exit 1 when a generated document differs from the results
    bench/report --no-plots          # everything but the plots (no matplotlib needed)

Each benchmark runs as its own process (`bench/run NAME` / `bench/soak`) and writes its own result
file at its end; a run that fails before that leaves the previous file in place and is reported.
The plots need matplotlib (the `bench` extra: pip install -e .[bench]); without it the report and
the documents are still written and the plots keep their last version.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import docs_gen  # noqa: E402

ROOT = docs_gen.ROOT
RESULTS = docs_gen.RESULTS
BENCHES = ("sql", "http", "e2e", "latency", "snapshot", "scaleout", "extras", "soak")
MODEST = {"sql": ["--n", "10000", "--pgbench-seconds", "5", "--repeat", "1"],
          "http": ["--duration", "2", "--rounds", "3"],
          "e2e": ["--n", "10000"],
          "latency": ["--samples", "50", "--burst", "5000"],
          "snapshot": ["--days", "14", "--backlog-days", "3"],
          "scaleout": ["--fills", "4000", "--seconds", "6"],
          "extras": ["--holdings", "2000", "--fills", "100"]}


def log(msg: str) -> None:
    print(f"[report {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_benchmark(name: str, full: bool, soak_duration: float | None) -> bool:
    """Run one benchmark; it writes bench/results/<name>.json itself. True when it exited 0."""
    if name == "soak":
        argv = [str(ROOT / "bench" / "soak")] + (["--duration", f"{soak_duration:g}"] if soak_duration else [])
    else:
        argv = [str(ROOT / "bench" / "run"), name] + ([] if full else MODEST[name])
    log("$ " + " ".join(argv))
    code = subprocess.run(argv, cwd=ROOT).returncode
    log(f"{name}: exit {code}")
    return code == 0


# ------------------------------------------------------------------------------------------------
# Plots: one PNG per figure whose data is in the results
# ------------------------------------------------------------------------------------------------

LATENCY_KINDS = ("execution", "position", "price")
LATENCY_TITLE = {"execution": "an execution on the order queue",
                 "position": "an exchange position event on the position queue",
                 "price": "a price push, POST /api/v1/prices"}
SQL_SHORT = {"k1": "commit\nevery 1", "k100": "commit\nevery 100", "k100_pipeline": "pipelined,\nevery 100",
             "k100_apply_batch": "apply_batch\nof 100"}


def plot_names(results: dict) -> list[str]:
    """The plots the results have data for (the report links exactly these)."""
    names = []
    if "sql" in results:
        names += ["sql_throughput", "ledger_cost"]
    if "http" in results:
        names += ["api_throughput_c1", "api_throughput_c8", "api_latency"]
    if "e2e" in results:
        names.append("e2e_throughput")
    if "latency" in results:
        names += [f"latency_{kind}" for kind in LATENCY_KINDS]
    if "snapshot" in results:
        names.append("jobs_fill_latency")
    if results.get("soak", {}).get("detail", {}).get("timeseries"):
        names.append("soak_timeline")
    return names


def plots(results: dict, plt, out: Path = RESULTS) -> list[str]:
    made: list[str] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        made.append(name)

    def bars(ax, labels, values, colors, fmt="{:,.0f}"):
        rects = ax.bar(labels, values, color=colors)
        for rect, v in zip(rects, values):
            ax.annotate(fmt.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)

    def value(name: str, key: str) -> float:
        fig = docs_gen.find(results, name, key)
        return (fig or {}).get("value") or 0.0

    if "sql" in results:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        keys = list(SQL_SHORT)
        bars(ax, ["pgbench\n(reference)"] + [SQL_SHORT[k] for k in keys],
             [value("sql", "pgbench")] + [value("sql", f"empty_{k}") for k in keys], ["#999999"] + ["#4c72b0"] * len(keys))
        ax.set_ylabel("per second, one connection")
        ax.set_title("SQL core: pm.apply_order_event beside pgbench (same run)")
        save(fig, "sql_throughput")

        fig, ax = plt.subplots(figsize=(7, 3.6))
        rows = results["sql"]["detail"]["ledger_rows_at_end"]
        x = range(len(keys))
        ax.bar([i - 0.2 for i in x], [value("sql", f"empty_{k}") for k in keys], width=0.4, label="empty ledger")
        ax.bar([i + 0.2 for i in x], [value("sql", f"grown_{k}") for k in keys], width=0.4, label=f"{rows:,} ledger rows")
        ax.set_xticks(list(x), [SQL_SHORT[k] for k in keys], fontsize=8)
        ax.set_ylabel("executions / s")
        ax.set_title("Cost against ledger size: the two databases measured in turns")
        ax.legend(fontsize=8)
        save(fig, "ledger_cost")

    if "http" in results:
        rows_all = results["http"]["detail"]["results"]
        for conns in (1, 8):
            rows = [r for r in rows_all if r["connections"] == conns]
            fig, ax = plt.subplots(figsize=(7, 3.6))
            bars(ax, [r["endpoint"].replace("/api/v1", "").replace(" (reference)", "\n(reference)") for r in rows],
                 [r["rps"] for r in rows], ["#999999"] + ["#55a868"] * (len(rows) - 1))
            ax.set_ylabel("requests / s")
            ax.set_title(f"API under gunicorn, {conns} connection{'s' if conns > 1 else ''}: endpoints vs SELECT 1")
            save(fig, f"api_throughput_c{conns}")
        rows = [r for r in rows_all if r["connections"] == 8]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["p50_ms"] for r in rows], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rows], width=0.4, label="p99")
        ax.set_xticks(list(x), [r["endpoint"].replace("/api/v1", "").replace(" (reference)", "") for r in rows], fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title("API latency percentiles (8 connections)")
        ax.legend(fontsize=8)
        save(fig, "api_latency")

    if "e2e" in results:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        bars(ax, ["no-op consumer\n(reference)", "end to end", "end to end,\nsteady state", "direct SQL,\none by one"],
             [value("e2e", k) for k in ("broker", "e2e", "e2e_steady", "direct_sql")],
             ["#999999", "#c44e52", "#c44e52", "#4c72b0"])
        ax.set_ylabel("executions / s")
        ax.set_title(f"Pipeline: {results['e2e']['params']['n']:,} executions through the order queue")
        save(fig, "e2e_throughput")

    if "latency" in results:
        run = results["latency"]
        detail = run["detail"]
        fraction = run["params"]["load_fraction"]
        styles = {("idle", "row"): ("#4c72b0", "--"), ("idle", "event"): ("#4c72b0", "-"),
                  ("load", "row"): ("#c44e52", "--"), ("load", "event"): ("#c44e52", "-")}
        for kind in LATENCY_KINDS:
            fig, ax = plt.subplots(figsize=(7, 3.6))
            for (phase, end), (color, line) in styles.items():
                samples = sorted(detail["samples_ms"][phase][kind][end])
                if not samples:
                    continue
                where = "idle" if phase == "idle" else f"{fraction:.0%} of capacity"
                what = "row updated" if end == "row" else "position_updated received"
                ax.step(samples, [(i + 1) / len(samples) for i in range(len(samples))], where="post",
                        color=color, linestyle=line, lw=1.2, label=f"{where}: {what}")
            for phase, target in detail["targets_ms"].items():
                ax.axvline(target, color="#4c72b0" if phase == "idle" else "#c44e52", lw=0.8, alpha=0.6)
                ax.annotate(f"p99 target {phase}: {target:g} ms", (target, 0.03), fontsize=7, rotation=90,
                            ha="right", va="bottom")
            ax.axhline(0.99, color="grey", lw=0.6, linestyle=":")
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("ms from publishing (sending) the input")
            ax.set_ylabel("share of inputs (CDF)")
            ax.set_title(f"Latency of {LATENCY_TITLE[kind]}", fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
            save(fig, f"latency_{kind}")

    if "snapshot" in results:
        detail = results["snapshot"]["detail"]
        keys = [("fills_baseline", "fills alone"), ("fills_during_cleanup", "during cleanup"),
                ("fills_during_backlog_cleanup", "during backlog\ncleanup"), ("fills_during_validation", "during\nvalidation")]
        rows = [(label, detail[k]) for k, label in keys if isinstance(detail.get(k), dict)]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["p50"] * 1000 for _, r in rows], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r["p99"] * 1000 for _, r in rows], width=0.4, label="p99")
        ax.set_xticks(list(x), [label for label, _ in rows], fontsize=8)
        ax.set_ylabel("fill latency, ms")
        ax.set_title(f"Fill latency while jobs run ({results['snapshot']['params']['snapshot_rows']:,} snapshot rows)")
        ax.legend(fontsize=8)
        save(fig, "jobs_fill_latency")

    soak = results.get("soak", {})
    ts = soak.get("detail", {}).get("timeseries")
    if ts:
        t = [p["t"] for p in ts]

        def rate(key):
            out_ = [float("nan")]
            for a, b in zip(ts, ts[1:]):
                ok = a.get(key) is not None and b.get(key) is not None and b["t"] > a["t"]
                out_.append((b[key] - a[key]) / (b["t"] - a["t"]) if ok else float("nan"))
            return out_

        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
        ax1.plot(t, rate("ledger_rows"), label="ledger rows applied / s", lw=1)
        ax1.plot(t, rate("published"), label="messages published / s", lw=1, alpha=0.7)
        ax1.plot(t, rate("api_requests"), label="API requests / s", lw=1, alpha=0.7)
        ax1.plot(t, rate("api_non_200"), label="API answers other than 200 / s (503)", lw=1, color="red")
        ax1.set_ylabel("per second")
        ax1.set_ylim(0, ax1.get_ylim()[1] * 1.3)
        ax1.legend(fontsize=7, loc="upper left", ncol=2)
        ax2.plot(t, [(p["order_depth"] + p["position_depth"]) if p.get("order_depth") is not None else float("nan")
                     for p in ts], label="ready messages (order + position queues)", color="#8172b2", lw=1)
        ax2.plot(t, [p["outbox_pending"] if p.get("outbox_pending") is not None else float("nan") for p in ts],
                 label="outbox rows not yet relayed", color="#937860", lw=1)
        ax2.set_ylabel("backlog")
        ax2.set_xlabel("seconds since the traffic started")
        ax2.set_ylim(0, max(10, ax2.get_ylim()[1]) * 1.5)
        ax2.legend(fontsize=7, loc="center left")
        colors = {"consumer_kill": "red", "relay_kill": "orange", "api_worker_kill": "green",
                  "rabbitmq_restart": "purple", "postgres_restart": "black"}
        for f in soak["detail"]["faults"]:
            if f.get("t_start") is None:
                continue
            for ax in (ax1, ax2):
                ax.axvspan(f["t_start"], max(f["t_end"] or f["t_start"], f["t_start"] + 0.3),
                           color=colors.get(f["kind"], "grey"), alpha=0.2)
            ax2.annotate(f["kind"].replace("_", " "), (f["t_start"], ax2.get_ylim()[1] * 0.97), fontsize=7,
                         rotation=90, va="top", ha="right", color=colors.get(f["kind"], "grey"))
        ax1.set_title(f"Soak: {soak['params']['duration']:.0f} s of traffic with faults (shaded: fault in progress)")
        save(fig, "soak_timeline")
    return made


# ------------------------------------------------------------------------------------------------
# report.md: the plots and the per-run detail that the documents leave out
# ------------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    num = docs_gen.number
    names = set(plot_names(results))
    lines = ["# Performance report", "",
             "<!-- Generated by bench/report from bench/results/*.json: do not edit. -->", "",
             "Plots and per-run detail of the result files beside this one. Every figure with its reference "
             "and the command that reproduces it: [docs/performance.md](../../docs/performance.md).", ""]

    def head(name: str, title: str) -> dict | None:
        run = results.get(name)
        lines.extend([f"## {title}", ""])
        if run is None:
            lines.extend([f"Not measured yet (`bench/run {name}`).", ""])
            return None
        lines.extend([f"`{run['command']}`", ""])
        return run

    def image(name: str, alt: str) -> None:
        if name in names:
            lines.extend([f"![{alt}]({name}.png)", ""])

    run = head("sql", "SQL core against pgbench")
    if run:
        image("sql_throughput", "SQL core throughput beside pgbench")
        image("ledger_cost", "rate with an empty and a grown ledger")
        runs = run["detail"]["runs"]
        lines += ["Every run (the figures are their medians):", "", "| measurement | runs, per second |", "|---|---|"]
        lines += [f"| {key} | {', '.join(num(v) for v in values)} |" for key, values in runs.items()]
        lines.append("")

    run = head("http", "REST API against SELECT 1")
    if run:
        image("api_throughput_c8", "API throughput, 8 connections")
        image("api_throughput_c1", "API throughput, 1 connection")
        image("api_latency", "API latency percentiles")
        lines += ["| endpoint | connections | req/s | p50 ms | p99 ms | server CPU ms/req | share of SELECT 1 per round |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in run["detail"]["results"]:
            lines.append(f"| `{r['endpoint']}` | {r['connections']} | {num(r['rps'])} | {num(r['p50_ms'], 'ms')} | "
                         f"{num(r['p99_ms'], 'ms')} | {num(r['cpu_ms_per_request'], 'ms')} | "
                         f"{', '.join(f'{x}%' for x in r.get('share_rounds', []))} |")
        lines.append("")

    run = head("e2e", "Event pipeline end to end")
    if run:
        image("e2e_throughput", "pipeline throughput beside its references")
        cpu = run["detail"].get("cpu_us_per_execution") or {}
        if cpu:
            lines += ["| CPU per execution, end to end | µs |", "|---|---:|"]
            lines += [f"| {k} | {num(v)} |" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])]
            noop = run["detail"].get("noop_consumer_cpu_us_per_message")
            if noop is not None:
                lines.append(f"| (the reference: the no-op pika consumer, per message) | {num(noop)} |")
            lines.append("")

    run = head("latency", "Latency: from a message to its position row and its event")
    if run:
        detail = run["detail"]
        for kind in LATENCY_KINDS:
            image(f"latency_{kind}", f"latency CDF of {LATENCY_TITLE[kind]}")
        fraction = run["params"]["load_fraction"]
        lines += [f"Capacity measured in this run: {num(detail['capacity']['rate'])} executions/s (a burst of "
                  f"{detail['capacity']['n']:,}, applied and relayed); the load: {num(detail['background_rate'])} "
                  f"executions/s in the background ({detail['background_rate'] / detail['capacity']['rate']:.0%}). "
                  "Row: the LISTEN pm_outbox watcher's read after the commit's notification (that read took "
                  f"p50 {num((detail.get('listen_query_ms') or {}).get('p50'), 'ms')} ms); event: arrival on a "
                  "queue bound to the events exchange.", "",
                  "| phase | input | until | n | p50 ms | p99 ms | max ms | p99 target ms | met |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for phase in ("idle", "load"):
            where = "idle" if phase == "idle" else f"{fraction:.0%} of capacity"
            for kind in LATENCY_KINDS:
                for end in ("row", "event"):
                    s_ = detail["summary"][phase][kind][end]
                    target = detail["targets_ms"][phase]
                    lines.append(f"| {where} | {kind} | {end} | {s_['n']} | {num(s_['p50'], 'ms')} | "
                                 f"{num(s_['p99'], 'ms')} | {num(s_['max'], 'ms')} | {target:g} | "
                                 f"{'yes' if s_['p99'] <= target else '**no**'} |")
        batches = detail.get("batches_while_sampling_under_load") or {}
        cores = detail.get("cores_while_sampling_under_load") or {}
        if batches.get("order_mean_batch_size"):
            lines += ["", f"While sampling under load the order consumer applied batches of "
                      f"{num(batches['order_mean_batch_size'])} messages in {num(batches['order_mean_batch_ms'], 'ms')} ms "
                      f"on average (arrival to acknowledgement {num(batches['order_mean_arrival_to_ack_ms'], 'ms')} ms; "
                      f"the burst's batches hold up to {run['params']['consumer_batch_size']:,}), and the relay published "
                      f"batches of {num(batches['relay_mean_events_per_batch'])} events in "
                      f"{num(batches['relay_mean_batch_ms'], 'ms')} ms on average (from the roles' heartbeats)."]
            if batches.get("relay_batches_over_100ms") is not None:
                lines[-1] += (f" Batches over 100 ms: {num(batches['order_batches_over_100ms'])} of "
                              f"{num(batches['order_batches'])} of the consumer's, {num(batches['relay_batches_over_100ms'])} "
                              f"of {num(batches['relay_batches'])} of the relay's (which published "
                              f"{num(batches['relay_portfolio_events'])} portfolio_updated events meanwhile).")
        if cores.get("machine") is not None:
            ours = {k: v for k, v in cores.items() if k not in ("machine", "everything else on the machine")}
            lines += ["", f"Cores used meanwhile (of {run['machine']['cores']}): the machine {cores['machine']:.2f}, "
                      f"other work on it {cores.get('everything else on the machine', 0):.2f}; "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(ours.items(), key=lambda kv: -kv[1]) if v >= 0.01)
                      + "."]
        http = detail.get("http_ms") or {}
        if http:
            lines += ["", "The price push's HTTP answer (the row is committed by then): " + "; ".join(
                f"{phase} p50 {num(h['p50'], 'ms')} ms, p99 {num(h['p99'], 'ms')} ms" for phase, h in http.items()) + "."]
        lines.append("")

    if head("scaleout", "Scaling out on one machine"):
        lines += ["Final positions identical with one or two consumers: "
                  f"{results['scaleout']['detail'].get('final_positions_identical')}.", ""]

    if head("snapshot", "Snapshots, retention and validation"):
        image("jobs_fill_latency", "fill latency while jobs run")

    head("extras", "Trade statistics, history, as-of and the live stream")

    run = head("soak", "Soak under injected faults")
    if run:
        detail = run["detail"]
        image("soak_timeline", "throughput and backlog through the soak, faults marked")
        lines += ["| fault | at s | took s | peak backlog | back to ~0 after s | detail |", "|---|---:|---:|---:|---:|---|"]
        for f in detail["faults"]:
            took = f"{f['t_end'] - f['t_start']:.1f}" if f.get("t_end") is not None and f.get("t_start") is not None else "-"
            rec = "-" if f.get("recovered_after") is None else f"{f['recovered_after']:.1f}"
            peak = "-" if f.get("peak_backlog") is None else f"{f['peak_backlog']}"
            lines.append(f"| {f['kind']} | {f.get('t_start') or 0:.0f} | {took} | {peak} | {rec} | {f['detail']} |")
        lines += ["", "Backlog: ready messages on the order and position queues plus outbox rows not yet relayed, "
                  "sampled every second.", "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {text} |" for name, ok, text in detail["checks"]]
        lines += ["", "Messages published: " + ", ".join(f"{k} {v:,}" for k, v in sorted(detail["published"].items())) + ".", ""]
    return "\n".join(lines)


def rendered(results: dict) -> dict[Path, str]:
    return {RESULTS / "report.md": markdown(results), **docs_gen.generated(results)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/report", description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="", help=f"run these benchmarks first: comma-separated of {','.join(BENCHES)}, or all")
    ap.add_argument("--full", action="store_true", help="with --run: the benchmarks' own full sizes")
    ap.add_argument("--soak-duration", type=float, default=None, help="with --run soak: seconds of soak traffic")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated file is stale")
    ap.add_argument("--no-plots", action="store_true", help="do not redraw the plots (matplotlib not needed)")
    args = ap.parse_args(argv)
    wanted = list(BENCHES) if args.run == "all" else [b for b in args.run.split(",") if b]
    unknown = set(wanted) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {','.join(BENCHES)}")

    if args.check:
        stale = [p for p, text in rendered(docs_gen.load_results()).items() if not p.exists() or p.read_text() != text]
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (bench/report rewrites it)")
        return 1 if stale else 0

    failed = [name for name in wanted if not run_benchmark(name, args.full, args.soak_duration)]
    results = docs_gen.load_results()
    if not args.no_plots:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log("no matplotlib (the bench extra: .venv/bin/pip install -e .[bench]): plots not redrawn")
        else:
            log(f"plots: {', '.join(plots(results, plt))}")
    for path, text in rendered(results).items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            log(f"wrote {path.relative_to(ROOT)}")
    if failed:
        log(f"FAILED: {', '.join(failed)} (their previous results were kept)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
