"""``python -m bench``: klime_mp against the official SDK, Segment and PostHog.

Installs nothing: ``pip install -e ".[bench]"`` first. Every SDK posts to the same
local sink (``bench/sink.py``); results go to ``bench/results/`` (JSON, markdown, PNG)
and, between markers, into ``docs/performance.md`` (and README.md if it has them).

Run it from the repository root (``bench`` is not an installed package):

    python -m bench                 # the full run (under 10 minutes on 2 cores)
    python -m bench --quick         # a ~2-minute smoke run, results in bench/results/quick/
    python -m bench --only latency,throughput --runs 5
    python -m bench --redraw        # measure nothing: charts and docs from results.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import phases, summary
from bench.control import ROOT, RefusedPort, SinkProcess
from bench.plan import FULL, PARTS, QUICK, Plan
from bench.report import update_docs, write
from bench.sdks import versions

RESULTS = ROOT / "bench" / "results"
DOCS = (ROOT / "docs" / "performance.md", ROOT / "README.md")  # updated where they have markers


def log(message: str) -> None:
    print(message, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2-minute smoke run")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument("--only", help=f"comma-separated parts: {','.join(PARTS)}")
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="measure nothing: charts, results.md and docs again from results.json",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not update docs/performance.md and README.md"
    )
    return parser.parse_args(argv)


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def revision() -> str:
    """The commit measured, and whether klime_mp had uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    try:
        commit, dirty = (
            git("rev-parse", "--short", "HEAD"),
            git("status", "--porcelain", "klime_mp"),
        )
    except OSError:
        return "unknown"
    return f"{commit}{' + uncommitted changes in klime_mp/' if dirty else ''}" or "unknown"


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_parts(plan: Plan, parts: list[str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    sink = SinkProcess()
    down = RefusedPort()
    try:
        steps = {
            "cpu": lambda: phases.cpu(plan, sink, log),
            "latency": lambda: phases.latency(plan, sink, down, log),
            "throughput": lambda: phases.throughput(plan, sink, log),
            "gunicorn": lambda: phases.gunicorn(plan, sink, log),
            "fork": lambda: phases.fork(plan, sink, log),
            "memory": lambda: phases.memory(plan, down, log),
            "forkcost": lambda: phases.forkcost(plan, log),
        }
        for part in parts:
            started = time.monotonic()
            log(f"== {part}")
            raw[part] = steps[part]()
            log(f"   ({time.monotonic() - started:.0f} s)")
    finally:
        down.close()
        sink.stop()
    return raw


def summarize(raw: dict[str, Any], plan: Plan) -> dict[str, Any]:
    results = {
        part: summary.memory(raw[part], plan)
        if part == "memory"
        else getattr(summary, part)(raw[part])
        for part in PARTS
        if part in raw
    }
    results["targets"] = summary.targets(results)
    return results


REQUIRED = ("klime_mp", "klime", "segment.analytics", "posthog", "gunicorn", "matplotlib")


def missing_modules() -> list[str]:
    """What the bench extra should have installed but did not (this installs nothing)."""
    missing = []
    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def charts_and_docs(results: dict[str, Any], out: Path, docs: bool) -> None:
    from bench.charts import draw

    out.mkdir(parents=True, exist_ok=True)
    charts = draw(results, out)
    path = write(results, out, charts)
    log(f"results: {path} and {out / 'results.json'}; charts: {', '.join(charts)}")
    for document in update_docs(results, charts, out, DOCS) if docs else []:
        log(f"updated {document.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    missing = missing_modules()
    if missing:
        log(f"missing: {', '.join(missing)}; install the bench extra: pip install -e '.[bench]'")
        return 2
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = replace(plan, runs=args.runs)
    parts = args.only.split(",") if args.only else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        log(f"unknown parts: {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
        return 2
    out = RESULTS / "quick" if args.quick else RESULTS
    if args.redraw:
        results = json.loads((out / "results.json").read_text())
        charts_and_docs(results, out, docs=not (args.quick or args.no_docs))
        return 0
    started = time.monotonic()
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "revision": revision(),
        "versions": versions(),
        "runs": plan.runs,
        "quick": args.quick,
        "parts": parts,
        "load_before": load_average(),
        "plan": asdict(plan),
    }
    raw = run_parts(plan, parts)
    results = summarize(raw, plan)
    meta.update(duration_s=time.monotonic() - started, load_after=load_average())
    results = {"meta": meta, **results, "raw": raw}
    charts_and_docs(results, out, docs=not (args.quick or args.no_docs))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
