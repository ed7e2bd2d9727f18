"""From samples to figures: percentiles, alternating rounds, medians (min-max) over runs,
ratios within runs (against the best peer *of that run*: see docs/performance.md),
tables, and the micro-benchmarks' command line."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from typing import Any, Callable

from bench.sdks import PEERS

Figures = dict[str, dict[str, Any]]  # sdk -> figure -> value, for one table of one run
Run = dict[str, Figures]  # table -> its figures
Summary = dict[str, Any]  # {"median", "min", "max"}

# The figures compared with the best peer, and whether lower is better. The ratio is
# always the one above 1 when klime_mp is ahead.
LOWER, HIGHER = True, False
RATIOS = {
    "cpu": {"us_per_event": LOWER},
    **{f"latency {c}": {"p50_us": LOWER, "p99_us": LOWER} for c in ("up", "down", "full")},
    "throughput": {"events_per_s": HIGHER},
}


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank, q in 0..1, of an ascending sequence."""
    return float(ordered[max(math.ceil(q * len(ordered)), 1) - 1])


def alternate(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each variant's figure from ``rounds`` rounds, every variant once a round and the
    order reversed every other round, so load on a shared machine hits them all alike. A
    first round, not counted, warms them up."""
    seen: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()
    for r in range(rounds):
        for name in reversed(seen) if r % 2 else seen:
            seen[name].append(variants[name]())
    return seen


def medians(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in alternate(variants, rounds).items()}


def arguments(doc: str, argv: list[str] | None = None, **defaults: float) -> argparse.Namespace:
    """A micro-benchmark's options: ``--name`` for each default, of the default's type."""
    parser = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return parser.parse_args(argv)


def summarize(values: list[Any]) -> Summary | bool | None:
    """Median with min and max over runs (runs without a value left out); for a flag,
    whether any run raised it."""
    if any(isinstance(v, bool) for v in values):
        return any(values)
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


def best_peer_ratio(runs: list[Figures], figure: str, lower_is_better: bool) -> Summary | None:
    ratios = []
    for run in runs:
        ours = (run.get("klime_mp") or {}).get(figure)
        peers = [run[p][figure] for p in PEERS if run.get(p, {}).get(figure) is not None]
        if ours and peers:
            ratios.append(min(peers) / ours if lower_is_better else ours / max(peers))
    result = summarize(ratios)
    return result if isinstance(result, dict) else None


def summary(runs: list[Run]) -> dict[str, Any]:
    """Per table: each SDK's figures over runs, and the ratios against the best peer."""
    out: dict[str, Any] = {}
    for table in dict.fromkeys(t for run in runs for t in run):
        per_run = [run.get(table, {}) for run in runs]
        sdks = dict.fromkeys(sdk for figures in per_run for sdk in figures)
        names = dict.fromkeys(f for figures in per_run for sdk in figures for f in figures[sdk])
        out[table] = {
            "sdks": {
                sdk: {f: summarize([r.get(sdk, {}).get(f) for r in per_run]) for f in names}
                for sdk in sdks
            },
            "vs_best_peer": {
                f: best_peer_ratio(per_run, f, lower) for f, lower in RATIOS.get(table, {}).items()
            },
        }
    return out


def fmt(value: Summary | bool | None, times: str = "") -> str:
    """``median (min-max)``, or the value alone when the runs agree; yes/no for flags."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"

    def one(x: float) -> str:
        if abs(x) >= 1000 or x == int(x):  # counts, and figures where decimals are noise
            return f"{x:,.0f}"
        return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"

    text = one(value["median"])
    if value["min"] != value["max"]:
        text += f" ({one(value['min'])}\u2013{one(value['max'])})"  # an en dash
    return text + times


def markdown(summaries: dict[str, Any]) -> str:
    """One markdown table per measurement, each with its line of ratios under it."""
    lines = []
    for table, part in summaries.items():
        names = list(dict.fromkeys(f for figures in part["sdks"].values() for f in figures))
        lines += [f"### {table}", "", "| SDK | " + " | ".join(names) + " |"]
        lines.append("|---" * (len(names) + 1) + "|")
        for sdk, figures in part["sdks"].items():
            lines.append(f"| {sdk} | " + " | ".join(fmt(figures.get(f)) for f in names) + " |")
        ratios = [f"{f} {fmt(r, chr(215))}" for f, r in part["vs_best_peer"].items()]
        if ratios:
            lines += ["", "klime_mp against the best peer of each run: " + ", ".join(ratios)]
        lines.append("")
    return "\n".join(lines)
