"""From raw per-run figures to medians (min-max), within-run ratios and targets.

A ratio is computed inside each run first (klime_mp against the best peer *of that
run*), and only then summarised over runs: on a shared, noisy machine two SDKs
measured seconds apart are comparable, the same SDK measured in two runs less so.
"""

from __future__ import annotations

import operator
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


def _fields(runs: list[Raw | None], keys: tuple[str, ...]) -> Raw:
    return {key: _over_runs(runs, _field(key)) for key in keys}


def _best_peer_ratio(
    per_sdk: dict[str, list[Raw | None]], pick: Pick, lower_is_better: bool
) -> Raw:
    """Per run: best peer's value / klime_mp's (or the inverse when higher is better),
    so a ratio above 1 always means klime_mp is ahead; the best peer of each run too."""
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
    return {**summarize(ratios), "best_peer": best_names}


def latency(raw: Raw) -> Raw:
    scaled = {"p50_us": 1e-3, "p99_us": 1e-3, "p999_us": 1e-3, "max_ms": 1e-6}
    out: Raw = {}
    for cond in CONDITIONS:
        table = {
            sdk: {
                **{key: _over_runs(runs, _field(f"{key[:-3]}_ns", s)) for key, s in scaled.items()},
                **_fields(runs, ("n", "preemptions")),
                "cut": any(r and r.get("budget_exhausted") for r in runs),
            }
            for sdk, runs in raw[cond].items()
        }
        ratios = {
            metric: _best_peer_ratio(raw[cond], _field(f"{metric}_ns"), lower_is_better=True)
            for metric in ("p50", "p99", "p999", "max")
        }
        out[cond] = {"sdks": table, "ratios": ratios}
    return out


def cpu(raw: Raw) -> Raw:
    """Worker CPU per event: per run, the SDK app's CPU per request minus the no-SDK
    app's, then the median over runs; the ratio is the best peer's over klime_mp's."""
    per_request = _field("cpu_us_per_request")
    base = [per_request(r) for r in raw["none"]]
    per_event: dict[str, list[Raw | None]] = {}
    table: Raw = {}
    # encode_only: absent from results made before that baseline existed
    for sdk in (*SDKS, *(["encode_only"] if raw.get("encode_only") else [])):
        mine = [per_request(r) for r in raw[sdk]]
        per_event[sdk] = [
            None if us is None or none is None else {"us": us - none}
            for us, none in zip(mine, base)
        ]
        table[sdk] = {
            "us_per_event": _over_runs(per_event[sdk], _field("us")),
            "us_per_request": summarize(mine),
            "requests": _over_runs(raw[sdk], _field("requests")),
        }
    table["none"] = {"us_per_request": summarize(base), **_fields(raw["none"], ("requests",))}
    return {"sdks": table, "ratio": _best_peer_ratio(per_event, _field("us"), lower_is_better=True)}


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
    keys = ("seconds", "events_per_s", "delivered", "requests", "connections", "enqueue_s")
    rate = _field("events_per_s")
    ceilings = raw.get("sink_ceiling", [])
    share = [ratio(rate(mine), rate(limit)) for mine, limit in zip(runs["klime_mp"], ceilings)]
    return {
        "sdks": {sdk: _fields(runs[sdk], keys) for sdk in SDKS},
        "ratio": _best_peer_ratio(runs, rate, lower_is_better=False),
        "sink": {
            **_fields(ceilings, ("events_per_s", "cpu_events_per_s")),
            "klime_mp_share": summarize(share),
        },
    }


def gunicorn(raw: Raw) -> Raw:
    table: Raw = {}
    for sdk, runs in raw.items():
        table[sdk] = _fields(runs, ("rps", "p50_ms", "p99_ms", "errors"))
        for key in ("p50_ms", "p99_ms", "rps"):
            pick = _field(key)
            relative = [ratio(pick(mine), pick(base)) for mine, base in zip(runs, raw["none"])]
            table[sdk][f"{key}_vs_none"] = summarize(relative)
    return {"sdks": table}


def fork(raw: Raw) -> Raw:
    keys = ("expected", "delivered", "lost", "duplicated", "delivery_ms")
    out: Raw = {"sink": {}, "collector": raw.get("collector", {})}
    for mode in FORK_MODES:
        out["sink"][mode] = {
            sdk: _fields(runs, keys)
            | {
                "never_delivered_runs": sum(1 for r in runs if r and r["delivery_ms"] is None),
                "at_exit_runs": sum(1 for r in runs if r and r.get("at_exit")),
            }
            for sdk, runs in raw["sink"].get(mode, {}).items()
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
        **{
            key: summarize([r[key] for r in runs])
            for key in ("get_with_ns", "get_without_ns", "getpid_ns")
        },
    }


def targets(results: Raw) -> list[Raw]:
    """The issue's targets, judged on the median over runs (the benchmark reports,
    it does not assert)."""
    rows: list[Raw] = []

    def target(name: str, value: Summary, goal: str, met: bool | None, unit: str = TIMES) -> None:
        rows.append({"target": name, "value": value, "goal": goal, "met": met, "unit": unit})

    def judged(value: Summary, which: str, test: Callable[[Any, Any], bool], goal: float) -> Any:
        return None if value[which] is None else test(value[which], goal)

    lat = results.get("latency")
    if lat:
        for cond in CONDITIONS:
            for metric, goal in (("p50", 5), ("p99", 10)):
                value = lat[cond]["ratios"][metric]
                met = judged(value, "median", operator.ge, goal)
                target(
                    f"track() {metric} vs best peer, collector {cond}",
                    value,
                    f"≥ {goal}{TIMES}",
                    met,
                )
        worst = lat["down"]["sdks"]["klime_mp"]["max_ms"]
        met = judged(worst, "max", operator.lt, 1.0)
        target("klime_mp track() max, collector down (worst run)", worst, "< 1 ms", met, " ms")
    tp = results.get("throughput")
    if tp:
        met = judged(tp["ratio"], "median", operator.ge, 5)
        target("end-to-end events/s vs best peer", tp["ratio"], f"≥ 5{TIMES}", met)
        conns = tp["sdks"]["klime_mp"]["connections"]
        met = judged(conns, "max", operator.eq, 1)
        target("klime_mp TCP connections for the burst", conns, "1", met, "")
    gun = results.get("gunicorn")
    if gun and "klime_mp" in gun["sdks"]:
        rel = gun["sdks"]["klime_mp"]["p50_ms_vs_none"]
        met = judged(rel, "median", operator.le, 1.03)
        target("Gunicorn p50 latency vs no SDK", rel, f"≤ 1.03{TIMES}", met)
        floor = gun["sdks"].get("encode_only")
        if floor:  # no goal: what an app that only encodes its event pays, for scale
            target(
                "(encode only, for scale) Gunicorn p50 vs no SDK",
                floor["p50_ms_vs_none"],
                "—",
                None,
            )
    return rows
