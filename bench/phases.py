"""The seven parts of the benchmark: each returns its raw per-run figures.

Within a run every SDK is measured back to back (the order rotates from run to run),
so a ratio between two SDKs compares measurements taken minutes apart at most.
"""

from __future__ import annotations

import functools
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from bench.control import ROOT, RefusedPort, SinkProcess, settle
from bench.plan import CONDITIONS, FORK_MODES, Plan
from bench.sdks import BASELINES, SDKS
from bench.under_gunicorn import cpu_run, preload_fork, serve_load

Raw = dict[str, Any]
Log = Callable[[str], None]
Describe = Callable[[Raw], str]  # a result as one line of the log


def rotated(names: tuple[str, ...], run: int) -> list[str]:
    shift = run % len(names)
    return list(names[shift:] + names[:shift])


def one_run(
    raw: Raw,
    run: int,
    names: Iterable[str],
    measure: Callable[[str], Raw | None],
    describe: Describe,
    log: Log,
    tag: str = "",
) -> None:
    """Measure each of ``names`` in the order given, keep each result, log it."""
    for sdk in names:
        result = measure(sdk)
        raw[sdk].append(result)
        if result:
            log(f"  run {run + 1} {tag}{sdk:9} {describe(result)}")


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
        if scenario == "fork":  # the parent leaves through a normal exit: hooks and all
            result["exit_code"] = proc.returncode
        return result


# -- 0 ----------------------------------------------------------------------------------


def all_apps(
    plan: Plan, part: str, measure: Callable[[list[str]], Raw], describe: Describe, log: Log
) -> Raw:
    """Parts 0 and 3: per run, every app (and the two baselines) served and loaded at once."""
    names = (*BASELINES, *SDKS)
    raw: Raw = {sdk: [] for sdk in names}
    for run in range(plan.runs):
        try:
            results = measure(rotated(names, run))
        except (RuntimeError, OSError, ValueError) as exc:
            log(f"  ! {part}: {exc}")
            results = {}
        one_run(raw, run, names, results.get, describe, log)
    return raw


def cpu(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    measure = functools.partial(cpu_run, sink=sink, plan=plan)
    return all_apps(plan, "cpu", measure, _cpu_line, log)


def _cpu_line(result: Raw) -> str:
    return (
        f"{result['cpu_us_per_request']:7.1f} µs CPU/request over {result['requests']} requests"
        + ("" if result["all_delivered"] else " (not all events delivered)")
    )


# -- 1 ----------------------------------------------------------------------------------


def latency(plan: Plan, sink: SinkProcess, down: RefusedPort, log: Log) -> Raw:
    def measure(cond: str, sdk: str) -> Raw | None:
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
        return workload("latency", config, plan.latency_budget_s + 60, log)

    raw: Raw = {cond: {sdk: [] for sdk in (*SDKS, "floor")} for cond in CONDITIONS}
    for run in range(plan.runs):
        for cond in CONDITIONS:
            names = rotated(SDKS, run) + (["floor"] if cond == "up" else [])
            measure_one = functools.partial(measure, cond)
            one_run(raw[cond], run, names, measure_one, _latency_line, log, f"{cond:4} ")
    return raw


def _latency_line(result: Raw) -> str:
    cut = " (cut)" if result["budget_exhausted"] else ""
    return (
        f"p50 {result['p50_ns'] / 1e3:8.1f} us  p99 {result['p99_ns'] / 1e3:9.1f} us"
        f"  max {result['max_ns'] / 1e6:8.2f} ms  n={result['n']}{cut}"
        f"  preempted {result.get('preemptions')}"
    )


# -- 2 ----------------------------------------------------------------------------------


def throughput(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    def measure(sdk: str) -> Raw | None:
        sink.reset()
        config = {
            "sdk": sdk,
            "url": sink.url,
            "control": sink.control_url,
            "events": plan.throughput_events,
            "timeout_s": plan.throughput_timeout_s,
        }
        result = workload("throughput", config, plan.throughput_timeout_s + 30, log)
        if result is not None:
            result["sink"] = sink.wait_quiet(0.2, 5.0)
        return result

    def describe(result: Raw) -> str:
        stats = result["sink"]
        seconds = (stats["last_event_ns"] - result["started_ns"]) / 1e9
        return (
            f"{stats['events']} events in {seconds:6.2f} s = {stats['events'] / seconds:9,.0f}/s,"
            f" {stats['requests']} requests, {stats['connections']} connections"
        )

    raw: Raw = {sdk: [] for sdk in SDKS}
    raw["sink_ceiling"] = []
    for run in range(plan.runs):
        limit = ceiling(sink, plan.ceiling_events)
        raw["sink_ceiling"].append(limit)
        log(
            f"  run {run + 1} sink ceiling {limit['events_per_s']:9,.0f}/s"
            f" (its CPU alone: {limit['cpu_events_per_s']:,.0f}/s)"
        )
        one_run(raw, run, rotated(SDKS, run), measure, describe, log)
    return raw


def ceiling(sink: SinkProcess, total: int) -> Raw:
    """The sink's own ceiling: one connection posts the same ready-made 100-event
    klime_mp batch as fast as the sink answers, no SDK work at all. If an SDK's burst
    figure comes near this, the sink, not the SDK, bounds it."""
    from klime_mp import events

    props = {"report_type": "revenue", "eid": "x"}
    batch = [events.encode_track("Report Generated", props, "usr_1", None) for _ in range(100)]
    body = b'{"batch":[' + b",".join(batch) + b"]}"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    sink.reset()
    cpu_before = sink.stats()["cpu_ns"]
    url = urlsplit(sink.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    started = time.monotonic_ns()
    try:
        for _ in range(total // len(batch)):
            conn.request("POST", "/v1/batch", body, headers)
            conn.getresponse().read()
    finally:
        conn.close()
    stats = sink.stats()
    seconds = (stats["last_event_ns"] - started) / 1e9
    cpu_s = (stats["cpu_ns"] - cpu_before) / 1e9
    return {
        "events": stats["events"],
        "seconds": seconds,
        "events_per_s": stats["events"] / seconds,  # one connection, request by request
        "sink_cpu_s": cpu_s,
        "cpu_events_per_s": stats["events"] / cpu_s,  # were the sink never descheduled
    }


# -- 3 ----------------------------------------------------------------------------------


def gunicorn(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    measure = functools.partial(serve_load, sink_url=sink.url, plan=plan)
    return all_apps(plan, "gunicorn", measure, _gunicorn_line, log)


def _gunicorn_line(result: Raw) -> str:
    return (
        f"{result['rps']:7.0f} req/s  p50 {result['p50_ms']:6.2f} ms"
        f"  p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}"
    )


# -- 4 ----------------------------------------------------------------------------------
# Two receivers: the sink (every SDK; counts receipts per ``properties.eid`` and the
# arrival of marker events) and, for klime_mp and the official klime, the real
# collector as a cross-check (it de-duplicates by messageId and counts duplicates).


def fork(plan: Plan, sink: SinkProcess, log: Log) -> Raw:
    raw: Raw = {"sink": {}, "collector": {}}
    for mode in FORK_MODES:
        raw["sink"][mode] = {sdk: [] for sdk in SDKS}
        measure = functools.partial(_fork_sink, sink, plan, log, mode)
        for run in range(plan.runs):
            names = rotated(SDKS, run)
            one_run(raw["sink"][mode], run, names, measure, _fork_line, log, f"{mode:7} ")
        if plan.collector_check:
            raw["collector"][mode] = {}
            for sdk in ("klime_mp", "klime"):
                outcome = _fork_collector(mode, sdk, plan, log)
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


def _fork_run(
    mode: str, sdk: str, url: str, control: str | None, plan: Plan, log: Log
) -> Raw | None:
    """The run itself; returns {"starts_ns": {marker: ns}, "expected": [eid, ...]}."""
    if mode == "preload":
        try:
            return preload_fork(sdk, url, control, plan)
        except (RuntimeError, OSError) as exc:
            log(f"  ! preload {sdk}: {exc}")
            return None
    config = {
        "mode": mode,
        "sdk": sdk,
        "url": url,
        "control": control,
        "parent_events": plan.parent_events,
        "child_events": plan.child_events,
        "children": plan.children,
        "tasks": plan.tasks,
        "wait_s": plan.wait_s if control else min(plan.wait_s, 1.0),
        "flush_interval_s": plan.fork_flush_s,
    }
    return workload("fork", config, 120, log)


def _count(expected: list[str], receipts: Counter[str]) -> Raw:
    delivered = sum(1 for eid in expected if receipts.get(eid, 0) > 0)
    duplicated = sum(max(receipts.get(eid, 0) - 1, 0) for eid in expected)
    return {
        "expected": len(expected),
        "delivered": delivered,
        "lost": len(expected) - delivered,
        "duplicated": duplicated,
    }


def _fork_sink(sink: SinkProcess, plan: Plan, log: Log, mode: str, sdk: str) -> Raw | None:
    sink.reset()
    result = _fork_run(mode, sdk, sink.url, sink.control_url, plan, log)
    if result is None:
        return None
    sink.wait_quiet(0.5, 10.0)  # late senders: exit flushes, retries
    outcome = _count(result["expected"], Counter(sink.eids()))
    # The median over the run's markers of (arrival - track()); None if none arrived.
    arrivals = sink.markers()
    starts = result["starts_ns"]
    delays = [(arrivals[m] - t) / 1e6 for m, t in starts.items() if m in arrivals]
    delay = statistics.median(delays) if delays else None
    outcome["delivery_ms"] = delay
    outcome["markers"] = len(starts)
    # Later than the window the child waited in: it went out only when the process
    # exited (or the batch filled), not on its own.
    outcome["at_exit"] = delay is not None and delay > plan.wait_s * 1000
    return outcome


def _fork_collector(mode: str, sdk: str, plan: Plan, log: Log) -> Raw | None:
    from klime_mp.collector import Collector

    with tempfile.TemporaryDirectory(prefix="bench-collector-") as folder:
        collector = Collector(db=Path(folder) / "fork.sqlite3").start()
        try:
            result = _fork_run(mode, sdk, collector.url, None, plan, log)
            if result is None:
                return None
            stats = settle(collector.stats, lambda s: s.received, 0.5, 10.0)
            stored = Counter(event.get("properties", {}).get("eid") for event in collector.events())
        finally:
            collector.stop()
    outcome = _count(result["expected"], stored)
    # The collector keeps one copy per messageId: a resent event shows up here.
    outcome["duplicated"] += stats.duplicates
    outcome["received"] = stats.received
    outcome["delivery_ms"] = None
    return outcome


# -- 5 ----------------------------------------------------------------------------------


def memory(plan: Plan, down: RefusedPort, log: Log) -> Raw:
    def measure(sdk: str) -> Raw | None:
        # The official SDK sends in the caller's thread once max_batch_size events
        # wait: its queue never holds 10,000 events.
        growth = sdk != "klime"
        config = {"sdk": sdk, "url": down.url, "events": plan.memory_events, "queue_growth": growth}
        return workload("memory", config, 120, log)

    def describe(result: Raw) -> str:
        growth = "n/a"
        if result["full_rss"] is not None:
            per_10k = (result["full_rss"] - result["idle_rss"]) / (plan.memory_events / 1e4)
            growth = f"{per_10k / 2**20:6.2f} MiB"
        return f"idle {result['idle_rss'] / 2**20:6.1f} MiB  growth per 10k events {growth}"

    raw: Raw = {sdk: [] for sdk in SDKS}
    for run in range(plan.runs):
        one_run(raw, run, rotated(SDKS, run), measure, describe, log)
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
