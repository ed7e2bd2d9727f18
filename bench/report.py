"""Writing the results: JSON, a markdown report, and the tables in the docs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.plan import CONDITIONS, FORK_MODES
from bench.sdks import BASELINES, LABELS, SDKS
from bench.stats import DASH, TIMES, Summary

Raw = dict[str, Any]
Column = tuple[str, int, str]  # a summary's key, its digits, its unit

FULL_MARKERS = ("<!-- bench-results:start -->", "<!-- bench-results:end -->")  # every table
SHORT_MARKERS = ("<!-- bench-summary:start -->", "<!-- bench-summary:end -->")  # the README's


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


def _rows(table: Raw, names: Iterable[str], columns: list[Column]) -> list[list[str]]:
    """A row per name that ``table`` has: its label, then each column's figure."""
    return [
        [LABELS[name], *(fmt(table[name].get(key), digits, unit) for key, digits, unit in columns)]
        for name in names
        if name in table
    ]


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


def _cpu(cpu: Raw, plan: Raw) -> list[str]:
    us = [("us_per_event", 1, " µs"), ("us_per_request", 1, " µs"), ("requests", 0, "")]
    rows = _rows(cpu["sdks"], (*SDKS, *reversed(BASELINES)), us)
    rows[-1][1] = "0 (the baseline)"
    return [
        f"### 0. CPU per event in a Gunicorn worker (about {plan['cpu_requests']:,} requests "
        "per app, one track() each, one sync worker per app, all apps loaded in turns)",
        "",
        *_table(["SDK", "CPU per event", "CPU per request", "requests"], rows),
        f"klime_mp vs the best peer: {fmt(cpu['ratio'], 1, TIMES)} less CPU per event "
        "(track() and its share of sending, the no-SDK request's CPU subtracted).",
        "",
    ]


LATENCY_TITLES = {
    "up": "collector up",
    "down": "collector down (connection refused)",
    "full": "queue full (collector down, queue at its default limit)",
}
LATENCY_COLUMNS = [("p50_us", 1, ""), ("p99_us", 1, ""), ("p999_us", 1, ""), ("max_ms", 2, " ms")]
LATENCY_COLUMNS += [("n", 0, ""), ("preemptions", 0, "")]


def _latency(lat: Raw, calls: int) -> list[str]:
    lines = [
        f"### 1. track() latency ({calls:,} calls per SDK, in {chr(181)}s unless noted)",
        "",
        "OS preemptions: involuntary context switches of the process during the run; a "
        "tail with many of them says more about the machine than about the SDK.",
        "",
    ]
    header = ["SDK", "p50", "p99", "p99.9", "max", "calls timed", "OS preemptions"]
    for cond in CONDITIONS:
        table = lat[cond]["sdks"]
        names = [n for n in (*SDKS, "floor") if n in table and table[n]["n"]["median"] is not None]
        rows = _rows(table, names, LATENCY_COLUMNS)
        for name, row in zip(names, rows):
            if table[name]["cut"]:
                row[5] += " (cut at the time budget)"
        ratios = lat[cond]["ratios"]
        lines += [f"**{LATENCY_TITLES[cond]}**", "", *_table(header, rows)]
        lines += [
            f"klime_mp vs the best peer (per run): p50 {fmt(ratios['p50'], 1, TIMES)} lower, "
            f"p99 {fmt(ratios['p99'], 1, TIMES)}, p99.9 {fmt(ratios['p999'], 1, TIMES)}, "
            f"max {fmt(ratios['max'], 1, TIMES)}.",
            "",
        ]
    return lines


def _throughput(tp: Raw, events: int) -> list[str]:
    columns = [("seconds", 2, " s"), ("events_per_s", 0, ""), ("requests", 0, "")]
    columns += [("connections", 0, ""), ("enqueue_s", 2, " s")]
    header = ["SDK", "until delivered", "events/s", "HTTP requests", "TCP connections", "burst"]
    lines = [
        f"### 2. Throughput: a {events:,}-event burst until delivered",
        "",
        *_table(header, _rows(tp["sdks"], SDKS, columns)),
        f"klime_mp vs the best peer: {fmt(tp['ratio'], 1, TIMES)} the events/s.",
        "",
    ]
    sink = tp.get("sink")
    if sink:
        lines += [
            f"The sink's own ceiling (a trivial client posting ready-made 100-event batches "
            f"over one connection): {fmt(sink['events_per_s'], 0)} events/s; its CPU alone "
            f"would allow {fmt(sink['cpu_events_per_s'], 0)}/s, so the ceiling is the "
            f"request/response round trip between two processes. klime_mp reached "
            f"{fmt(sink['klime_mp_share'], 2, TIMES)} of it.",
            "",
        ]
    return lines


def _gunicorn(gun: Raw, meta: Raw) -> list[str]:
    columns = [("rps", 0, ""), ("p50_ms", 2, " ms"), ("p99_ms", 2, " ms")]
    columns += [("p50_ms_vs_none", 3, TIMES), ("p99_ms_vs_none", 2, TIMES)]
    rows = _rows(gun["sdks"], (*BASELINES, *SDKS), [*columns, ("rps_vs_none", 3, TIMES)])
    if rows and "none" in gun["sdks"]:
        rows[0][4:] = ["1", "1", "1"]  # the baseline against itself
    header = ["app", "req/s", "p50", "p99", "p50 vs none", "p99 vs none", "req/s vs none"]
    return [
        f"### 3. Under Gunicorn ({meta['plan']['gunicorn_workers']} sync workers, "
        f"{meta['plan']['concurrency']} concurrent clients)",
        "",
        *_table(header, rows),
    ]


def _fork(fork: Raw) -> list[str]:
    counts = [(key, 0, "") for key in ("expected", "delivered", "lost", "duplicated")]
    rows = []
    for mode in FORK_MODES:
        per_sdk = fork["sink"].get(mode, {})
        for sdk, row in zip(per_sdk, _rows(per_sdk, per_sdk, counts)):
            entry = per_sdk[sdk]
            never = entry["never_delivered_runs"]
            delay = fmt(entry["delivery_ms"], 0, " ms")
            if entry.get("at_exit_runs"):
                delay += " (at exit)"
            if never:
                delay = "never" if delay == "n/a" else f"{delay} (never in {never} run(s))"
            rows.append([mode, *row, delay])
    header = ["mode", "SDK", "expected", "delivered", "lost", "duplicated"]
    lines = [
        "### 4. Fork: events tracked around fork(), and a child's first event",
        "",
        *_table([*header, "first event after"], rows),
    ]
    checks = fork.get("collector") or {}
    if checks:
        rows = [
            [mode, LABELS[sdk], *(str(o[key]) for key, _, _ in counts)]
            for mode, per_sdk in checks.items()
            for sdk, o in per_sdk.items()
            if o
        ]
        header[3] = "stored"
        lines += ["Cross-check against the real collector (de-duplicates by messageId):", ""]
        lines += _table(header, rows)
    return lines


def _memory(mem: Raw) -> list[str]:
    columns = [("idle_rss_mib", 1, " MiB"), ("client_mib", 1, " MiB")]
    columns += [("growth_per_10k_mib", 2, " MiB")]
    rows = _rows(mem, SDKS, columns)
    for row in rows:
        if row[3] == "n/a":
            row[3] = "n/a (sends from the caller at max_batch_size)"
    header = ["SDK", "idle client RSS", "import + client", "growth per 10,000 queued"]
    return ["### 5. Memory", "", *_table(header, rows)]


def _forkcost(cost: Raw) -> list[str]:
    row = [
        fmt(cost["track_with_ns"], 0, " ns"),
        fmt(cost["track_without_ns"], 0, " ns"),
        f"{fmt(cost['delta_ns'], 0, ' ns')} ({fmt(cost['overhead_pct'], 1, ' %')})",
        fmt(cost["getpid_ns"], 0, " ns"),
    ]
    return [
        "### 6. The cost of fork safety (klime_mp track(), events built and encoded, not sent)",
        "",
        *_table(["with the PID check", "without", "difference", "os.getpid()"], [row]),
    ]


def _charts(charts: list[str], prefix: str) -> list[str]:
    return [f"![{Path(chart).stem}]({prefix}{Path(chart).name})" for chart in charts]


def markdown(results: Raw, charts: list[str], chart_prefix: str) -> str:
    meta = results["meta"]
    plan = meta["plan"]
    lines = _meta(meta)
    if results.get("targets"):
        lines += ["### Targets", "", *_targets(results["targets"])]
    parts = {
        "cpu": lambda cpu: _cpu(cpu, plan),
        "latency": lambda lat: _latency(lat, plan["latency_calls"]),
        "throughput": lambda tp: _throughput(tp, plan["throughput_events"]),
        "gunicorn": lambda gun: _gunicorn(gun, meta),
        "fork": _fork,
        "memory": _memory,
        "forkcost": _forkcost,
    }
    for part, section in parts.items():
        if part in results:
            lines += section(results[part])
    for chart in _charts(charts, chart_prefix):
        lines += [chart, ""]
    return "\n".join(lines)


def summary_markdown(results: Raw, charts: list[str], chart_prefix: str) -> str:
    """The short form for the README: the run, CPU per event, the targets, one chart."""
    lines = _meta(results["meta"])
    if "cpu" in results:
        lines += _cpu(results["cpu"], results["meta"]["plan"])
    if results.get("targets"):
        lines += _targets(results["targets"])
    lines += _charts(charts[:1], chart_prefix)
    lines += ["", "Method and every table: [docs/performance.md](docs/performance.md).", ""]
    return "\n".join(lines)


def write(results: Raw, folder: Path, charts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    path = folder / "results.md"
    path.write_text("## Benchmark results\n\n" + markdown(results, charts, "") + "\n")
    return path


def update_docs(
    results: Raw, charts: list[str], out: Path, documents: Iterable[Path]
) -> list[Path]:
    """Every table between the bench-results markers, the short form between the
    bench-summary markers, in whichever of ``documents`` has them; those updated."""
    updated = []
    for document in documents:
        prefix = os.path.relpath(out, document.parent) + "/"
        full = _between_markers(document, markdown(results, charts, prefix), FULL_MARKERS)
        short = _between_markers(document, summary_markdown(results, charts, prefix), SHORT_MARKERS)
        if full or short:
            updated.append(document)
    return updated


def _between_markers(document: Path, text: str, markers: tuple[str, str]) -> bool:
    """Replace what stands between the markers of ``document``; False when it has no
    such markers (it is then left alone)."""
    if not document.exists():
        return False
    content = document.read_text()
    start, end = markers
    # Markers on lines of their own: the prose that names them (in backticks) is not one.
    pattern = re.compile(
        "^" + re.escape(start) + "$.*?^" + re.escape(end) + "$", re.DOTALL | re.MULTILINE
    )
    if not pattern.search(content):
        return False
    document.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content, count=1))
    return True
