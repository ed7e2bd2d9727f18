"""``python -m bench``: klime_mp against the official SDK, Segment and PostHog, in one run.

python -m bench [--quick] [--only latency,throughput] [--runs 5]   (docs/performance.md)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from bench import under_gunicorn
from bench.collector import RefusedPort, Sink, connection
from bench.sdks import BASELINES, SDKS
from bench.table import Figures, Run, markdown, summary

ROOT = Path(__file__).resolve().parent.parent
BENCH_DISTRIBUTIONS = ("segment-analytics-python", "posthog", "gunicorn")


@dataclass(frozen=True)
class Plan:
    runs: int = 3  # every figure is the median (min-max) over this many runs
    latency_calls: int = 50_000
    latency_budget_s: float = 12.0  # a run is cut here, the call in flight censored...
    latency_stall_s: float = 2.0  # ...and so is a run whose one call blocks this long
    throughput_events: int = 50_000
    cpu_requests: int = 2000  # per app
    gunicorn_requests: int = 3000  # per app
    gunicorn_workers: int = 4
    slices: int = 10  # each app's requests in this many turns
    memory_events: int = 50_000


QUICK = Plan(1, 2000, 4.0, 1.0, 5000, 200, 300, 2, 2, 5000)


def rotated(names: tuple[str, ...], run: int) -> list[str]:
    """The SDKs in the order of this run: each goes first in turn."""
    shift = run % len(names)
    return list(names[shift:] + names[:shift])


def workload(part: str, config: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """``python -m bench.workload`` for one SDK; its result, or None if it had none."""
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        out = Path(folder, "result.json")
        command = [sys.executable, "-m", "bench.workload", part, json.dumps(config), str(out)]
        try:
            done = subprocess.run(command, cwd=ROOT, timeout=timeout, capture_output=True)
        except subprocess.TimeoutExpired:
            print(f"  ! {part} {config['sdk']}: no result in {timeout:.0f} s", flush=True)
            return None
        if not out.exists():
            print(f"  ! {part} {config['sdk']}: {done.stderr.decode()[-1500:]}", flush=True)
            return None
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def latency(plan: Plan, sink: Sink, down: RefusedPort, run: int) -> Run:
    """track() call by call: collector up, down (refused), and queue full (down)."""
    tables: Run = {}
    for cond in ("up", "down", "full"):
        names = rotated(SDKS, run) + (["floor"] if cond == "up" else [])
        config = {
            "url": sink.url if cond == "up" else down.url,
            "calls": plan.latency_calls,
            "budget_s": plan.latency_budget_s,
            "stall_s": plan.latency_stall_s,
            "prefill": cond == "full",
            "queue_size": None if cond == "full" else plan.latency_calls + 1000,
        }
        timeout = plan.latency_budget_s + 60
        results = {sdk: workload("latency", {**config, "sdk": sdk}, timeout) for sdk in names}
        tables[f"latency {cond}"] = {sdk: r for sdk, r in results.items() if r}
    return tables


def throughput(plan: Plan, sink: Sink, down: RefusedPort, run: int) -> Run:
    config = {"url": sink.url, "events": plan.throughput_events, "timeout_s": 60.0}
    found = {sdk: workload("throughput", {**config, "sdk": sdk}, 120) for sdk in rotated(SDKS, run)}
    figures: Figures = {sdk: result for sdk, result in found.items() if result}
    figures["collector ceiling"] = ceiling(sink, plan.throughput_events)
    return {"throughput": figures}


def ceiling(sink: Sink, events: int) -> dict[str, Any]:
    """The sink's own limit: ready-made 100-event batches over one connection, no SDK."""
    event: dict[str, Any] = {"type": "track", "messageId": "0" * 36, "userId": "usr_1"}
    event |= {"event": "Report Generated", "timestamp": "2026-01-01T00:00:00Z", "properties": {}}
    body = json.dumps({"batch": [event] * 100}).encode()
    conn = connection(sink.url)
    started = time.monotonic()
    for _ in range(events // 100):
        conn.request("POST", "/v1/batch", body, {"Authorization": "Bearer k"})
        conn.getresponse().read()
    conn.close()
    return {"events_per_s": events // 100 * 100 / (time.monotonic() - started)}


def gunicorn(plan: Plan, sink: Sink, down: RefusedPort, run: int) -> Run:
    apps = rotated((*BASELINES, *SDKS), run)
    args = (apps, sink, plan.gunicorn_requests, plan.slices, plan.gunicorn_workers)
    return {"gunicorn": under_gunicorn.latency(*args)}


def cpu(plan: Plan, sink: Sink, down: RefusedPort, run: int) -> Run:
    apps = rotated((*BASELINES, *SDKS), run)
    return {"cpu": under_gunicorn.cpu(apps, sink, plan.cpu_requests, plan.slices)}


def memory(plan: Plan, sink: Sink, down: RefusedPort, run: int) -> Run:
    config = {"url": down.url, "events": plan.memory_events}
    results = {sdk: workload("memory", {**config, "sdk": sdk}, 120) for sdk in rotated(SDKS, run)}
    return {"memory": {sdk: r for sdk, r in results.items() if r}}


Part = Callable[[Plan, Sink, RefusedPort, int], Run]
PARTS: dict[str, Part] = {
    part.__name__: part for part in (cpu, latency, throughput, gunicorn, memory)
}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def installed(dist: str) -> str:
    with contextlib.suppress(PackageNotFoundError):
        return version(dist)
    return "not installed"


def meta(plan: Plan, parts: list[str]) -> dict[str, Any]:
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "revision": subprocess.run(git, capture_output=True, text=True).stdout.strip(),
        "versions": {d: installed(d) for d in ("klime_mp", "klime", *BENCH_DISTRIBUTIONS)},
        "load_before": "/".join(f"{x:.1f}" for x in os.getloadavg()),
        "parts": parts,
        "plan": asdict(plan),
    }


def measure(plan: Plan, parts: list[str]) -> list[Run]:
    """Every part in each run, every SDK within a part back to back, in rotating order."""
    runs: list[Run] = []
    sink, down = Sink(), RefusedPort()
    try:
        for run in range(plan.runs):
            figures: Run = {}
            for part in parts:
                print(f"== run {run + 1}/{plan.runs}: {part}", flush=True)
                figures.update(PARTS[part](plan, sink, down, run))
            runs.append(figures)
    finally:
        down.close()
        sink.stop()
    return runs


def write(results: dict[str, Any], out: Path) -> str:
    """results.json (every run's figures) and results.md (the tables); the tables."""
    m = results["meta"]
    versions = ", ".join(f"{name} {v}" for name, v in m["versions"].items())
    text = (
        f"{m['date']}, {m['machine']} ({m['cpus']} CPUs), Python {m['python']}, klime_mp at"
        f" {m['revision']}; {versions}; {m['plan']['runs']} run(s), load {m['load_before']},"
        f" {m['duration_s']} s\n\n" + markdown(results["summary"])
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, runs=args.runs) if args.runs else plan
    parts = args.only.split(",")
    if not set(parts) <= set(PARTS):
        parser.error(f"--only takes some of {','.join(PARTS)}")
    started = time.monotonic()
    results: dict[str, Any] = {"meta": meta(plan, parts), "runs": measure(plan, parts)}
    results["meta"]["duration_s"] = round(time.monotonic() - started)
    results["summary"] = summary(results["runs"])
    out = ROOT / "bench" / "results" / ("quick" if args.quick else "")
    print(write(results, out), f"\nwritten: {out}/results.json and results.md", sep="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
