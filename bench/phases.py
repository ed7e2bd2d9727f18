"""The six parts of the benchmark: each returns its raw per-run figures.

Within a run every SDK is measured back to back (the order rotates from run to run),
so a ratio between two SDKs compares measurements taken minutes apart at most.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from bench.control import ROOT, RefusedPort, SinkProcess
from bench.plan import CONDITIONS, Plan
from bench.sdks import SDKS
from bench.under_gunicorn import serve_load

Raw = dict[str, Any]
Log = Callable[[str], None]


def rotated(names: tuple[str, ...], run: int) -> list[str]:
    shift = run % len(names)
    return list(names[shift:] + names[:shift])


def workload(scenario: str, config: dict[str, Any], timeout: float, log: Log) -> Raw | None:
    """Run ``python -m bench.workload`` and return its JSON result (None if it failed)."""
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, "-m", "bench.workload", scenario, json.dumps(config), str(out)]
        try:
            proc = subprocess.run(
                command, cwd=ROOT, timeout=timeout, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            log(f"  ! {scenario} {config.get('sdk')}: no result within {timeout:.0f} s")
            return None
        if not out.exists():
            tail = (proc.stderr or "")[-1500:]
            log(f"  ! {scenario} {config.get('sdk')}: exit {proc.returncode}\n{tail}")
            return None
        result: Raw = json.loads(out.read_text())
        return result


# -- 1 ----------------------------------------------------------------------------------


def latency(plan: Plan, sink: SinkProcess, down: RefusedPort, log: Log) -> Raw:
    raw: Raw = {cond: {sdk: [] for sdk in (*SDKS, "floor")} for cond in CONDITIONS}
    for run in range(plan.runs):
        for cond in CONDITIONS:
            names = rotated(SDKS, run) + (["floor"] if cond == "up" else [])
            for sdk in names:
                config = {
                    "sdk": sdk,
                    "url": sink.url if cond == "up" else down.url,
                    "calls": plan.latency_calls,
                    "budget_s": plan.latency_budget_s,
                    "stall_s": plan.latency_stall_s,
                    "prefill": cond == "full",
                    # up/down: room for every call, so nobody drops; full: SDK default
                    "queue_size": None if cond == "full" else plan.latency_calls + 1000,
                }
                result = workload("latency", config, plan.latency_budget_s + 60, log)
                raw[cond][sdk].append(result)
                if result:
                    log(f"  run {run + 1} {cond:4} {sdk:9} {_latency_line(result)}")
    return raw


def _latency_line(result: Raw) -> str:
    cut = " (cut)" if result["budget_exhausted"] else ""
    return (
        f"p50 {result['p50_ns'] / 1e3:8.1f} us  p99 {result['p99_ns'] / 1e3:9.1f} us"
        f"  max {result['max_ns'] / 1e6:8.2f} ms  n={result['n']}{cut}"
        f"  preempted {result.get('preemptions')}"
    )


# -- 0 ----------------------------------------------------------------------------------


def cpu(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    from bench.cpu import cpu_run

    names = ("none", *SDKS)
    raw: Raw = {sdk: [] for sdk in names}
    for run in range(plan.runs):
        try:
            results: Raw = cpu_run(rotated(names, run), sink, plan)
        except (RuntimeError, OSError, ValueError) as exc:
            log(f"  ! cpu: {exc}")
            results = {}
        for sdk in names:
            result = results.get(sdk)
            raw[sdk].append(result)
            if result:
                log(
                    f"  run {run + 1} {sdk:9} {result['cpu_us_per_request']:7.1f} µs CPU/request"
                    f" over {result['requests']} requests"
                    + ("" if result["all_delivered"] else " (not all events delivered)")
                )
    return raw


# -- 2 ----------------------------------------------------------------------------------


def throughput(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    from bench.ceiling import ceiling

    raw: Raw = {sdk: [] for sdk in SDKS}
    raw["sink_ceiling"] = []
    for run in range(plan.runs):
        limit = ceiling(sink, plan.ceiling_events)
        raw["sink_ceiling"].append(limit)
        log(
            f"  run {run + 1} sink ceiling {limit['events_per_s']:9,.0f}/s"
            f" (its CPU alone: {limit['cpu_events_per_s']:,.0f}/s)"
        )
        for sdk in rotated(SDKS, run):
            sink.reset()
            config = {
                "sdk": sdk,
                "url": sink.url,
                "control": sink.control_url,
                "events": plan.throughput_events,
                "timeout_s": plan.throughput_timeout_s,
            }
            result: Raw | None = workload("throughput", config, plan.throughput_timeout_s + 30, log)
            if result is None:
                raw[sdk].append(None)
                continue
            result["sink"] = sink.wait_quiet(0.2, 5.0)
            raw[sdk].append(result)
            stats = result["sink"]
            seconds = (stats["last_event_ns"] - result["started_ns"]) / 1e9
            log(
                f"  run {run + 1} {sdk:9} {stats['events']} events in {seconds:6.2f} s"
                f" = {stats['events'] / seconds:9,.0f}/s, {stats['requests']} requests,"
                f" {stats['connections']} connections"
            )
    return raw


# -- 3 ----------------------------------------------------------------------------------


def gunicorn(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    names = ("none", *SDKS)
    raw: Raw = {sdk: [] for sdk in names}
    for run in range(plan.runs):
        order = rotated(names, run)
        try:
            results: dict[str, Raw] = serve_load(order, sink.url, plan)
        except (RuntimeError, OSError) as exc:
            log(f"  ! gunicorn: {exc}")
            results = {}
        for sdk in names:
            result = results.get(sdk)
            raw[sdk].append(result)
            if result:
                log(
                    f"  run {run + 1} {sdk:9} {result['rps']:7.0f} req/s"
                    f"  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"
                    f"  errors {result['errors']}"
                )
    return raw


# -- 4 ----------------------------------------------------------------------------------


def fork(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    from bench.forkcount import collector_run, sink_run

    raw: Raw = {"sink": {}, "collector": {}}
    for mode in ("fork", "pool", "preload"):
        raw["sink"][mode] = {sdk: [] for sdk in SDKS}
        for run in range(plan.runs):
            for sdk in rotated(SDKS, run):
                outcome = sink_run(mode, sdk, sink, plan, log)
                raw["sink"][mode][sdk].append(outcome)
                if outcome:
                    log(f"  run {run + 1} {mode:7} {sdk:9} {_fork_line(outcome)}")
        if plan.collector_check:
            raw["collector"][mode] = {}
            for sdk in ("klime_mp", "klime"):
                outcome = collector_run(mode, sdk, plan, log)
                raw["collector"][mode][sdk] = outcome
                if outcome:
                    log(f"  collector {mode:7} {sdk:9} {_fork_line(outcome)}")
    return raw


def _fork_line(outcome: Raw) -> str:
    delay = outcome.get("delivery_ms")
    shown = "never" if delay is None else f"{delay:7.0f} ms"
    return (
        f"expected {outcome['expected']:3} delivered {outcome['delivered']:3}"
        f" lost {outcome['lost']:3} duplicated {outcome['duplicated']:3}  first event: {shown}"
    )


# -- 5 ----------------------------------------------------------------------------------


def memory(plan: Plan, down: RefusedPort, log: Log) -> Raw:
    raw: Raw = {sdk: [] for sdk in SDKS}
    for run in range(plan.runs):
        for sdk in rotated(SDKS, run):
            config = {
                "sdk": sdk,
                "url": down.url,
                "events": plan.memory_events,
                # The official SDK sends in the caller's thread once max_batch_size
                # events wait: its queue never holds 10,000 events.
                "queue_growth": sdk != "klime",
            }
            result = workload("memory", config, 120, log)
            raw[sdk].append(result)
            if result:
                growth = "n/a"
                if result["full_rss"] is not None:
                    per_10k = (result["full_rss"] - result["idle_rss"]) / (plan.memory_events / 1e4)
                    growth = f"{per_10k / 2**20:6.2f} MiB"
                log(
                    f"  run {run + 1} {sdk:9} idle {result['idle_rss'] / 2**20:6.1f} MiB"
                    f"  growth per 10k events {growth}"
                )
    return raw


# -- 6 ----------------------------------------------------------------------------------


def forkcost(plan: Plan, log: Log) -> Raw:
    runs = []
    for run in range(plan.runs):
        config = {
            "url": "http://127.0.0.1:9",
            "blocks": plan.forkcost_blocks,
            "calls_per_block": plan.forkcost_calls_per_block,
        }
        result = workload("forkcost", config, 300, log)
        runs.append(result)
        if result:
            with_ns = statistics.median(result["with_ns"])
            without_ns = statistics.median(result["without_ns"])
            log(
                f"  run {run + 1} track() {with_ns:7.0f} ns with the PID check,"
                f" {without_ns:7.0f} ns without; os.getpid() {result['getpid_ns']:.0f} ns"
            )
    return {"runs": runs}
