"""Writing the results: JSON, a markdown report, and the tables in the docs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.plan import CONDITIONS, FORK_MODES
from bench.sdks import LABELS, SDKS
from bench.stats import DASH, TIMES, Summary

Raw = dict[str, Any]

START = "<!-- bench-results:start -->"  # the full tables (docs/performance.md)
END = "<!-- bench-results:end -->"
SUMMARY_START = "<!-- bench-summary:start -->"  # run, targets, one chart (README.md)
SUMMARY_END = "<!-- bench-summary:end -->"


def fmt(summary: Summary | None, digits: int = 1, unit: str = "") -> str:
    """``median (min-max)``, or just the value when there was one run."""
    if not summary or summary.get("median") is None:
        return "n/a"

    def one(value: float) -> str:
        return f"{value:,.{digits}f}"

    text = one(summary["median"])
    if len(summary.get("runs", [])) > 1 and summary["min"] != summary["max"]:
        text += f" ({one(summary['min'])}{DASH}{one(summary['max'])})"
    return text + unit


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _meta(meta: Raw) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    return [
        f"Run on {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs), "
        f"Python {meta['python']}; {versions}; klime_mp at {meta.get('revision', 'unknown')}.",
        f"{meta['runs']} run(s) per figure{' (--quick)' if meta['quick'] else ''}: each "
        f"figure is the median over runs, with (min{DASH}max) when runs differ; load "
        f"average {meta['load_before']} before, {meta['load_after']} after; the whole "
        f"run took {meta['duration_s']:.0f} s.",
        "",
    ]


def _targets(rows: list[Raw]) -> list[str]:
    mark = {True: "met", False: "**missed**", None: "n/a"}
    body = [[r["target"], r["goal"], fmt(r["value"], 2, r["unit"]), mark[r["met"]]] for r in rows]
    return _table(["target", "goal", "result", ""], body)


def _latency(lat: Raw, calls: int) -> list[str]:
    lines = [
        f"### 1. track() latency ({calls:,} calls per SDK, in {chr(181)}s unless noted)",
        "",
        "OS preemptions: involuntary context switches of the process during the run; a "
        "tail with many of them says more about the machine than about the SDK.",
        "",
    ]
    titles = {
        "up": "collector up",
        "down": "collector down (connection refused)",
        "full": "queue full (collector down, queue at its default limit)",
    }
    for cond in CONDITIONS:
        table = lat[cond]["sdks"]
        rows = []
        for sdk in (*SDKS, "floor"):
            if sdk not in table or table[sdk]["n"]["median"] is None:
                continue
            entry = table[sdk]
            name = "harness floor (empty call)" if sdk == "floor" else LABELS[sdk]
            cut = " (cut at the time budget)" if entry["cut"] else ""
            rows.append(
                [
                    name,
                    fmt(entry["p50_us"], 1),
                    fmt(entry["p99_us"], 1),
                    fmt(entry["p999_us"], 1),
                    fmt(entry["max_ms"], 2, " ms"),
                    fmt(entry["n"], 0) + cut,
                    fmt(entry.get("preemptions"), 0),
                ]
            )
        lines += [f"**{titles[cond]}**", ""]
        lines += _table(
            ["SDK", "p50", "p99", "p99.9", "max", "calls timed", "OS preemptions"], rows
        )
        ratios = lat[cond]["ratios"]
        lines += [
            f"klime_mp vs the best peer (per run): p50 {fmt(ratios['p50'], 1, TIMES)} lower, "
            f"p99 {fmt(ratios['p99'], 1, TIMES)}, p99.9 {fmt(ratios['p999'], 1, TIMES)}, "
            f"max {fmt(ratios['max'], 1, TIMES)}.",
            "",
        ]
    return lines


def _cpu(cpu: Raw, plan: Raw) -> list[str]:
    rows = [
        [
            LABELS[sdk],
            fmt(cpu["sdks"][sdk]["us_per_event"], 1, " µs"),
            fmt(cpu["sdks"][sdk]["us_per_request"], 1, " µs"),
            fmt(cpu["sdks"][sdk]["requests"], 0),
        ]
        for sdk in SDKS
    ]
    rows.append(
        [
            LABELS["none"],
            "0 (the baseline)",
            fmt(cpu["sdks"]["none"]["us_per_request"], 1, " µs"),
            fmt(cpu["sdks"]["none"].get("requests"), 0),
        ]
    )
    return [
        f"### 0. CPU per event in a Gunicorn worker (about {plan['cpu_requests']:,} requests "
        "per app, one track() each, one sync worker per app, all apps loaded in turns)",
        "",
        *_table(["SDK", "CPU per event", "CPU per request", "requests"], rows),
        f"klime_mp vs the best peer: {fmt(cpu['ratio'], 1, TIMES)} less CPU per event "
        "(track() and its share of sending, the no-SDK request's CPU subtracted).",
        "",
    ]


def _throughput(tp: Raw, events: int) -> list[str]:
    rows = [
        [
            LABELS[sdk],
            fmt(tp["sdks"][sdk]["seconds"], 2, " s"),
            fmt(tp["sdks"][sdk]["events_per_s"], 0),
            fmt(tp["sdks"][sdk]["requests"], 0),
            fmt(tp["sdks"][sdk]["connections"], 0),
            fmt(tp["sdks"][sdk]["enqueue_s"], 2, " s"),
        ]
        for sdk in SDKS
    ]
    return [
        f"### 2. Throughput: a {events:,}-event burst until delivered",
        "",
        *_table(
            ["SDK", "until delivered", "events/s", "HTTP requests", "TCP connections", "burst"],
            rows,
        ),
        f"klime_mp vs the best peer: {fmt(tp['ratio'], 1, TIMES)} the events/s.",
        "",
        *_sink_ceiling(tp.get("sink")),
    ]


def _sink_ceiling(sink: Raw | None) -> list[str]:
    if not sink:
        return []
    return [
        f"The sink's own ceiling (a trivial client posting ready-made 100-event batches "
        f"over one connection): {fmt(sink['events_per_s'], 0)} events/s; its CPU alone "
        f"would allow {fmt(sink['cpu_events_per_s'], 0)}/s, so the ceiling is the "
        f"request/response round trip between two processes. klime_mp reached "
        f"{fmt(sink['klime_mp_share'], 2, TIMES)} of it.",
        "",
    ]


def _gunicorn(gun: Raw, meta: Raw) -> list[str]:
    rows = []
    for sdk in ("none", *SDKS):
        if sdk not in gun["sdks"]:
            continue
        entry = gun["sdks"][sdk]
        rows.append(
            [
                LABELS[sdk],
                fmt(entry["rps"], 0),
                fmt(entry["p50_ms"], 2, " ms"),
                fmt(entry["p99_ms"], 2, " ms"),
                "1" if sdk == "none" else fmt(entry["p50_ms_vs_none"], 3, TIMES),
                "1" if sdk == "none" else fmt(entry["p99_ms_vs_none"], 2, TIMES),
                "1" if sdk == "none" else fmt(entry["rps_vs_none"], 3, TIMES),
            ]
        )
    return [
        f"### 3. Under Gunicorn ({meta['plan']['gunicorn_workers']} sync workers, "
        f"{meta['plan']['concurrency']} concurrent clients)",
        "",
        *_table(
            ["app", "req/s", "p50", "p99", "p50 vs none", "p99 vs none", "req/s vs none"], rows
        ),
    ]


def _fork(fork: Raw) -> list[str]:
    rows = []
    for mode in FORK_MODES:
        for sdk, entry in fork["sink"].get(mode, {}).items():
            never = entry["never_delivered_runs"]
            delay = fmt(entry["delivery_ms"], 0, " ms")
            if entry.get("at_exit_runs"):
                delay += " (at exit)"
            if never:
                delay = "never" if delay == "n/a" else f"{delay} (never in {never} run(s))"
            rows.append(
                [
                    mode,
                    LABELS[sdk],
                    fmt(entry["expected"], 0),
                    fmt(entry["delivered"], 0),
                    fmt(entry["lost"], 0),
                    fmt(entry["duplicated"], 0),
                    delay,
                ]
            )
    lines = [
        "### 4. Fork: events tracked around fork(), and a child's first event",
        "",
        *_table(
            ["mode", "SDK", "expected", "delivered", "lost", "duplicated", "first event after"],
            rows,
        ),
    ]
    checks = fork.get("collector") or {}
    if checks:
        rows = [
            [
                mode,
                LABELS[sdk],
                str(o["expected"]),
                str(o["delivered"]),
                str(o["lost"]),
                str(o["duplicated"]),
            ]
            for mode, per_sdk in checks.items()
            for sdk, o in per_sdk.items()
            if o
        ]
        lines += ["Cross-check against the real collector (de-duplicates by messageId):", ""]
        lines += _table(["mode", "SDK", "expected", "stored", "lost", "duplicated"], rows)
    return lines


def _memory(mem: Raw) -> list[str]:
    rows = [
        [
            LABELS[sdk],
            fmt(mem[sdk]["idle_rss_mib"], 1, " MiB"),
            fmt(mem[sdk]["client_mib"], 1, " MiB"),
            fmt(mem[sdk]["growth_per_10k_mib"], 2, " MiB")
            if mem[sdk]["growth_per_10k_mib"]["median"] is not None
            else "n/a (sends from the caller at max_batch_size)",
        ]
        for sdk in SDKS
        if sdk in mem
    ]
    return [
        "### 5. Memory",
        "",
        *_table(["SDK", "idle client RSS", "import + client", "growth per 10,000 queued"], rows),
    ]


def _forkcost(cost: Raw) -> list[str]:
    return [
        "### 6. The cost of fork safety (klime_mp track(), events built and encoded, not sent)",
        "",
        *_table(
            ["with the PID check", "without", "difference", "os.getpid()"],
            [
                [
                    fmt(cost["track_with_ns"], 0, " ns"),
                    fmt(cost["track_without_ns"], 0, " ns"),
                    f"{fmt(cost['delta_ns'], 0, ' ns')} ({fmt(cost['overhead_pct'], 1, ' %')})",
                    fmt(cost["getpid_ns"], 0, " ns"),
                ]
            ],
        ),
    ]


def markdown(results: Raw, charts: list[str], chart_prefix: str) -> str:
    meta = results["meta"]
    plan = meta["plan"]
    lines = _meta(meta)
    if results.get("targets"):
        lines += ["### Targets", "", *_targets(results["targets"])]
    if "cpu" in results:
        lines += _cpu(results["cpu"], plan)
    if "latency" in results:
        lines += _latency(results["latency"], plan["latency_calls"])
    if "throughput" in results:
        lines += _throughput(results["throughput"], plan["throughput_events"])
    if "gunicorn" in results:
        lines += _gunicorn(results["gunicorn"], meta)
    if "fork" in results:
        lines += _fork(results["fork"])
    if "memory" in results:
        lines += _memory(results["memory"])
    if "forkcost" in results:
        lines += _forkcost(results["forkcost"])
    for chart in charts:
        lines += [f"![{Path(chart).stem}]({chart_prefix}{Path(chart).name})", ""]
    return "\n".join(lines)


def summary_markdown(results: Raw, charts: list[str], chart_prefix: str) -> str:
    """The short form for the README: the run, the targets, the latency chart."""
    lines = _meta(results["meta"])
    if "cpu" in results:
        lines += _cpu(results["cpu"], results["meta"]["plan"])
    if results.get("targets"):
        lines += _targets(results["targets"])
    lines += [f"![{Path(c).stem}]({chart_prefix}{Path(c).name})" for c in charts[:1]]
    lines += ["", "Method and every table: [docs/performance.md](docs/performance.md).", ""]
    return "\n".join(lines)


def write(results: Raw, folder: Path, charts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    path = folder / "results.md"
    path.write_text("## Benchmark results\n\n" + markdown(results, charts, "") + "\n")
    return path


def update_between_markers(document: Path, text: str, start: str = START, end: str = END) -> bool:
    """Replace what stands between the ``start`` and ``end`` markers of ``document``;
    False when it has no such markers (it is then left alone)."""
    if not document.exists():
        return False
    content = document.read_text()
    # Markers on lines of their own: the prose that names them (in backticks) is not one.
    pattern = re.compile(
        "^" + re.escape(start) + "$.*?^" + re.escape(end) + "$", re.DOTALL | re.MULTILINE
    )
    if not pattern.search(content):
        return False
    document.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content, count=1))
    return True
