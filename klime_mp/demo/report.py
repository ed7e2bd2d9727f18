"""What reached the collector, and the demo's verdict: delivered, lost and duplicated
events, and a row for every worker (zero where a worker served nothing)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TextIO

from klime_mp.collector import Collector

from .load import LoadResult


@dataclass(frozen=True)
class Tally:
    stored: int  # unique events (by messageId) at the collector
    duplicates: int  # receipts of a messageId already stored
    connections: int  # TCP connections the collector accepted
    batches: int  # POST /v1/batch requests
    track_by_pid: Counter[int]  # track events by their worker_pid property


@dataclass(frozen=True)
class Outcome:
    """One server's line in the verdict."""

    server: str
    expected: int
    delivered: int
    duplicated: int
    failed_requests: int
    # Raw duplicates that are no fault: after a kill -9, the batch the killed worker had
    # in flight (stored, not yet acknowledged) is sent again by a sibling; the server
    # keeps one copy. At most one batch: the API's 100 events.
    allowed_duplicates: int = 0

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.delivered)

    @property
    def ok(self) -> bool:
        exact = self.delivered == self.expected and self.duplicated <= self.allowed_duplicates
        return exact and self.failed_requests == 0


def tally(collector: Collector, expected: int, settle: float = 5.0) -> Tally:
    """Count what reached ``collector``, waiting up to ``settle`` s for ``expected``."""
    collector.wait_for(expected, settle)
    stats = collector.stats()
    by_pid: Counter[int] = Counter()
    for event in collector.events():
        if event.get("type") == "track":
            by_pid[int(event.get("properties", {}).get("worker_pid", 0))] += 1
    return Tally(stats.stored, stats.duplicates, stats.connections, stats.requests, by_pid)


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def report(
    load: LoadResult,
    got: Tally,
    elapsed: float,
    out: TextIO,
    workers: Collection[int] = (),
    server: str = "",
    killed: int | None = None,
) -> bool:
    """Print one server's report; True when every event arrived exactly once.
    ``workers``: every worker PID the server had, listed even when it served nothing."""
    outcome = outcome_of(server, load, got, killed)
    p50, p99 = (1000 * percentile(load.latencies, p) for p in (0.5, 0.99))
    rows = [
        ("requests sent", f"{load.sent} ({load.ok} ok, {load.failed} failed)"),
        ("events expected", str(load.events_expected)),
        ("events delivered", str(got.stored)),
        ("events lost", str(outcome.lost)),
        ("duplicates", _duplicates(got.duplicates, killed)),
        ("TCP connections", f"{got.connections} (for {got.batches} batches)"),
        ("request latency", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"),
        ("elapsed", f"{elapsed:.1f} s"),
    ]
    for label, value in rows:
        print(f"  {label:<18}{value}", file=out)
    _per_worker(load, got, workers, out)
    for error in sorted(set(load.errors))[:5]:
        print(f"  request error: {error}", file=out)
    verdict = (
        "every tracked event arrived exactly once"
        if outcome.ok
        else "events were LOST or DUPLICATED"
    )
    print(f"\n{'OK' if outcome.ok else 'FAIL'}: {verdict}.", file=out)
    return outcome.ok


def outcome_of(server: str, load: LoadResult, got: Tally, killed: int | None = None) -> Outcome:
    allowed = KILLED_IN_FLIGHT_MAX if killed is not None else 0
    return Outcome(server, load.events_expected, got.stored, got.duplicates, load.failed, allowed)


KILLED_IN_FLIGHT_MAX = 100


def _duplicates(count: int, killed: int | None) -> str:
    if count and killed is not None and count <= KILLED_IN_FLIGHT_MAX:
        return f"{count} (sent again after the kill -9: in flight at {killed}'s death; stored once)"
    return str(count)


def _per_worker(load: LoadResult, got: Tally, workers: Collection[int], out: TextIO) -> None:
    pids = set(workers) | set(load.requests_by_pid) | set(got.track_by_pid)
    print(f"  per worker PID    requests  track events   ({len(pids)} workers)", file=out)
    for pid in sorted(pids):
        sent, seen = load.requests_by_pid[pid], got.track_by_pid[pid]
        mark = "" if sent == seen else "   <- mismatch"
        print(f"    {pid:<16}{sent:>8}  {seen:>12}{mark}", file=out)


def summary(outcomes: Sequence[Outcome], out: TextIO) -> None:
    """One line per server, for runs over several servers."""
    print(
        f"\n  {'server':<12}{'expected':>10}{'delivered':>11}{'lost':>7}{'duplicated':>12}",
        file=out,
    )
    for o in outcomes:
        line = f"{o.server:<12}{o.expected:>10}{o.delivered:>11}{o.lost:>7}{o.duplicated:>12}"
        print(f"  {line}{'' if o.ok else '   FAIL'}", file=out)
