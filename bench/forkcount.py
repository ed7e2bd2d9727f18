"""Counting a fork run: delivered, lost and duplicated events, and first-event delay.

Two receivers: the sink (every SDK; counts receipts per ``properties.eid`` and the
arrival of marker events) and, for klime_mp and the official klime, the real collector
as a cross-check (it de-duplicates by messageId and counts the duplicates it saw).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from bench.control import ROOT, SinkProcess
from bench.plan import Plan
from bench.under_gunicorn import preload_fork

Raw = dict[str, Any]
Log = Callable[[str], None]


def _fork_config(mode: str, sdk: str, url: str, control: str | None, plan: Plan) -> Raw:
    return {
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


def _run(mode: str, sdk: str, url: str, control: str | None, plan: Plan, log: Log) -> Raw | None:
    """The run itself; returns {"starts_ns": {marker: ns}, "expected": [eid, ...]}."""
    if mode == "preload":
        try:
            return preload_fork(sdk, url, control, plan)
        except (RuntimeError, OSError) as exc:
            log(f"  ! preload {sdk}: {exc}")
            return None
    config = _fork_config(mode, sdk, url, control, plan)
    with tempfile.TemporaryDirectory(prefix="bench-fork-") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, "-m", "bench.workload", "fork", json.dumps(config), str(out)]
        try:
            proc = subprocess.run(command, cwd=ROOT, timeout=120, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            log(f"  ! {mode} {sdk}: did not finish in 120 s")
            return None
        if not out.exists():
            log(f"  ! {mode} {sdk}: exit {proc.returncode}\n{proc.stderr[-1500:]}")
            return None
        result: Raw = json.loads(out.read_text())
        result["exit_code"] = proc.returncode
        return result


def count(expected: list[str], receipts: Counter[str]) -> Raw:
    delivered = sum(1 for eid in expected if receipts.get(eid, 0) > 0)
    duplicated = sum(max(receipts.get(eid, 0) - 1, 0) for eid in expected)
    return {
        "expected": len(expected),
        "delivered": delivered,
        "lost": len(expected) - delivered,
        "duplicated": duplicated,
    }


def _delivery_ms(starts: dict[str, int], arrivals: dict[str, int]) -> float | None:
    """Median over the run's markers of (arrival - track()); None if none arrived."""
    delays = [(arrivals[m] - t) / 1e6 for m, t in starts.items() if m in arrivals]
    return statistics.median(delays) if delays else None


def sink_run(mode: str, sdk: str, sink: SinkProcess, plan: Plan, log: Log) -> Raw | None:
    sink.reset()
    result = _run(mode, sdk, sink.url, sink.control_url, plan, log)
    if result is None:
        return None
    sink.wait_quiet(0.5, 10.0)  # late senders: exit flushes, retries
    outcome = count(result["expected"], Counter(sink.eids()))
    outcome["delivery_ms"] = _delivery_ms(result["starts_ns"], sink.markers())
    outcome["markers"] = len(result["starts_ns"])
    # Later than the window the child waited in: it went out only when the process
    # exited (or the batch filled), not on its own.
    delay = outcome["delivery_ms"]
    outcome["at_exit"] = delay is not None and delay > plan.wait_s * 1000
    return outcome


def collector_run(mode: str, sdk: str, plan: Plan, log: Log) -> Raw | None:
    from klime_mp.collector import Collector

    with tempfile.TemporaryDirectory(prefix="bench-collector-") as folder:
        collector = Collector(db=Path(folder) / "fork.sqlite3").start()
        try:
            result = _run(mode, sdk, collector.url, None, plan, log)
            if result is None:
                return None
            _wait_stable(collector)
            stats = collector.stats()
            stored = Counter(event.get("properties", {}).get("eid") for event in collector.events())
        finally:
            collector.stop()
    outcome = count(result["expected"], stored)
    # The collector keeps one copy per messageId: a resent event shows up here.
    outcome["duplicated"] += stats.duplicates
    outcome["received"] = stats.received
    outcome["delivery_ms"] = None
    return outcome


def _wait_stable(collector: Any, quiet: float = 0.5, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last = collector.stats().received
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = collector.stats().received
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
