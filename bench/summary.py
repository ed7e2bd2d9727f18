"""From raw per-run figures to medians (min-max), within-run ratios and targets.

A ratio is computed inside each run first (klime_mp against the best peer *of that
run*), and only then summarised over runs: on a shared, noisy machine two SDKs
measured seconds apart are comparable, the same SDK measured in two runs less so.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Optional

from bench.plan import CONDITIONS, FORK_MODES, Plan
from bench.sdks import PEERS, SDKS
from bench.stats import TIMES, Summary, ratio, summarize

Raw = dict[str, Any]
Pick = Callable[[Optional[Raw]], Optional[float]]


def _field(name: str, scale: float = 1.0) -> Pick:
    def pick(result: Raw | None) -> float | None:
        if not result or result.get(name) is None:
            return None
        return float(result[name]) * scale

    return pick


def _over_runs(runs: list[Raw | None], pick: Pick) -> Summary:
    return summarize([pick(r) for r in runs])


def _best_peer_ratio(
    per_sdk: dict[str, list[Raw | None]], pick: Pick, lower_is_better: bool
) -> tuple[Summary, list[str | None]]:
    """Per run: best peer's value / klime_mp's (or the inverse when higher is better),
    so a ratio above 1 always means klime_mp is ahead."""
    ratios: list[float | None] = []
    best_names: list[str | None] = []
    for run, ours in enumerate(per_sdk["klime_mp"]):
        peers = {p: pick(per_sdk[p][run]) for p in PEERS if run < len(per_sdk[p])}
        present = {p: v for p, v in peers.items() if v is not None}
        mine = pick(ours)
        if not present or mine is None:
            ratios.append(None)
            best_names.append(None)
            continue
        chooser = min if lower_is_better else max
        best = chooser(present, key=lambda p: present[p])
        best_names.append(best)
        value = present[best]
        ratios.append(ratio(value, mine) if lower_is_better else ratio(mine, value))
    return summarize(ratios), best_names


def latency(raw: Raw) -> Raw:
    out: Raw = {}
    for cond in CONDITIONS:
        table = {
            sdk: {
                "p50_us": _over_runs(runs, _field("p50_ns", 1e-3)),
                "p99_us": _over_runs(runs, _field("p99_ns", 1e-3)),
                "p999_us": _over_runs(runs, _field("p999_ns", 1e-3)),
                "max_ms": _over_runs(runs, _field("max_ns", 1e-6)),
                "n": _over_runs(runs, _field("n")),
                "preemptions": _over_runs(runs, _field("preemptions")),
                "cut": any(r and r.get("budget_exhausted") for r in runs),
            }
            for sdk, runs in raw[cond].items()
        }
        ratios = {}
        for metric, key in (
            ("p50", "p50_ns"),
            ("p99", "p99_ns"),
            ("p999", "p999_ns"),
            ("max", "max_ns"),
        ):
            summary, best = _best_peer_ratio(raw[cond], _field(key), lower_is_better=True)
            ratios[metric] = {**summary, "best_peer": best}
        out[cond] = {"sdks": table, "ratios": ratios}
    return out


def cpu(raw: Raw) -> Raw:
    """Worker CPU per event: per run, the SDK app's CPU per request minus the no-SDK
    app's, then the median over runs; the ratio is the best peer's over klime_mp's."""
    base = [_field("cpu_us_per_request")(r) for r in raw["none"]]
    per_event: dict[str, list[Raw | None]] = {}
    table: Raw = {}
    for sdk in SDKS:
        runs = []
        for result, none in zip(raw[sdk], base):
            mine = _field("cpu_us_per_request")(result)
            runs.append(None if mine is None or none is None else {"us": mine - none})
        per_event[sdk] = runs
        table[sdk] = {
            "us_per_event": _over_runs(runs, _field("us")),
            "us_per_request": _over_runs(raw[sdk], _field("cpu_us_per_request")),
            "requests": _over_runs(raw[sdk], _field("requests")),
        }
    table["none"] = {
        "us_per_request": summarize(base),
        "requests": _over_runs(raw["none"], _field("requests")),
    }
    summary, best = _best_peer_ratio(per_event, _field("us"), lower_is_better=True)
    return {"sdks": table, "ratio": {**summary, "best_peer": best}}


def _throughput_run(result: Raw | None) -> Raw | None:
    if not result or not result["sink"]["last_event_ns"]:
        return None
    sink = result["sink"]
    seconds = (sink["last_event_ns"] - result["started_ns"]) / 1e9
    return {
        "seconds": seconds,
        "events_per_s": sink["events"] / seconds,
        "delivered": sink["events"],
        "requests": sink["requests"],
        "connections": sink["connections"],
        "enqueue_s": (result["enqueued_ns"] - result["started_ns"]) / 1e9,
        "complete": result["complete"],
    }


def throughput(raw: Raw) -> Raw:
    runs = {sdk: [_throughput_run(r) for r in raw[sdk]] for sdk in SDKS}
    table = {
        sdk: {
            key: _over_runs(runs[sdk], _field(key))
            for key in (
                "seconds",
                "events_per_s",
                "delivered",
                "requests",
                "connections",
                "enqueue_s",
            )
        }
        for sdk in SDKS
    }
    summary, best = _best_peer_ratio(runs, _field("events_per_s"), lower_is_better=False)
    ceilings = raw.get("sink_ceiling", [])
    share = [
        ratio(_field("events_per_s")(mine), _field("events_per_s")(limit))
        for mine, limit in zip(runs["klime_mp"], ceilings)
    ]
    sink = {
        "events_per_s": _over_runs(ceilings, _field("events_per_s")),
        "cpu_events_per_s": _over_runs(ceilings, _field("cpu_events_per_s")),
        "klime_mp_share": summarize(share),
    }
    return {"sdks": table, "ratio": {**summary, "best_peer": best}, "sink": sink}


def gunicorn(raw: Raw) -> Raw:
    table: Raw = {}
    for sdk, runs in raw.items():
        entry = {
            key: _over_runs(runs, _field(key)) for key in ("rps", "p50_ms", "p99_ms", "errors")
        }
        for key, _lower_better in (("p50_ms", True), ("p99_ms", True), ("rps", False)):
            per_run = [
                ratio(_field(key)(mine), _field(key)(base)) for mine, base in zip(runs, raw["none"])
            ]
            entry[f"{key}_vs_none"] = summarize(per_run)
        table[sdk] = entry
    return {"sdks": table}


def fork(raw: Raw) -> Raw:
    out: Raw = {"sink": {}, "collector": raw.get("collector", {})}
    for mode in FORK_MODES:
        per_sdk = raw["sink"].get(mode, {})
        out["sink"][mode] = {
            sdk: {
                key: _over_runs(runs, _field(key))
                for key in ("expected", "delivered", "lost", "duplicated", "delivery_ms")
            }
            | {
                "never_delivered_runs": sum(1 for r in runs if r and r["delivery_ms"] is None),
                "at_exit_runs": sum(1 for r in runs if r and r.get("at_exit")),
            }
            for sdk, runs in per_sdk.items()
        }
    return out


def memory(raw: Raw, plan: Plan) -> Raw:
    per_10k = plan.memory_events / 10_000

    def growth(result: Raw | None) -> float | None:
        if not result or result.get("full_rss") is None:
            return None
        return float(result["full_rss"] - result["idle_rss"]) / 2**20 / per_10k

    def idle_delta(result: Raw | None) -> float | None:
        return None if not result else float(result["idle_rss"] - result["bare_rss"]) / 2**20

    return {
        sdk: {
            "idle_rss_mib": _over_runs(runs, _field("idle_rss", 1 / 2**20)),
            "client_mib": _over_runs(runs, idle_delta),
            "growth_per_10k_mib": _over_runs(runs, growth),
        }
        for sdk, runs in raw.items()
    }


def forkcost(raw: Raw) -> Raw:
    runs = [r for r in raw["runs"] if r]
    with_ns = [statistics.median(r["with_ns"]) for r in runs]
    without_ns = [statistics.median(r["without_ns"]) for r in runs]
    return {
        "track_with_ns": summarize(with_ns),
        "track_without_ns": summarize(without_ns),
        "delta_ns": summarize([a - b for a, b in zip(with_ns, without_ns)]),
        "overhead_pct": summarize([(a / b - 1) * 100 for a, b in zip(with_ns, without_ns)]),
        "get_with_ns": summarize([r["get_with_ns"] for r in runs]),
        "get_without_ns": summarize([r["get_without_ns"] for r in runs]),
        "getpid_ns": summarize([r["getpid_ns"] for r in runs]),
    }


def _target(name: str, value: Summary, goal: str, met: bool | None, unit: str) -> Raw:
    return {"target": name, "value": value, "goal": goal, "met": met, "unit": unit}


def _at_least(value: Summary, goal: float) -> bool | None:
    return None if value["median"] is None else value["median"] >= goal


def targets(results: Raw) -> list[Raw]:
    """The issue's targets, judged on the median over runs (the benchmark reports,
    it does not assert)."""
    rows: list[Raw] = []
    lat = results.get("latency")
    if lat:
        for cond in CONDITIONS:
            ratios = lat[cond]["ratios"]
            rows.append(
                _target(
                    f"track() p50 vs best peer, collector {cond}",
                    ratios["p50"],
                    f"\u2265 5{TIMES}",
                    _at_least(ratios["p50"], 5),
                    TIMES,
                )
            )
            rows.append(
                _target(
                    f"track() p99 vs best peer, collector {cond}",
                    ratios["p99"],
                    f"\u2265 10{TIMES}",
                    _at_least(ratios["p99"], 10),
                    TIMES,
                )
            )
        worst = lat["down"]["sdks"]["klime_mp"]["max_ms"]
        met = None if worst["max"] is None else worst["max"] < 1.0
        rows.append(
            _target("klime_mp track() max, collector down (worst run)", worst, "< 1 ms", met, " ms")
        )
    tp = results.get("throughput")
    if tp:
        rows.append(
            _target(
                "end-to-end events/s vs best peer",
                tp["ratio"],
                f"\u2265 5{TIMES}",
                _at_least(tp["ratio"], 5),
                TIMES,
            )
        )
        conns = tp["sdks"]["klime_mp"]["connections"]
        met = None if conns["max"] is None else conns["max"] == 1
        rows.append(_target("klime_mp TCP connections for the burst", conns, "1", met, ""))
    gun = results.get("gunicorn")
    if gun and "klime_mp" in gun["sdks"]:
        rel = gun["sdks"]["klime_mp"]["p50_ms_vs_none"]
        met = None if rel["median"] is None else rel["median"] <= 1.03
        rows.append(
            _target("Gunicorn p50 latency vs no SDK", rel, f"\u2264 1.03{TIMES}", met, TIMES)
        )
    return rows
