"""A server that stays down longer than the retries: what is lost is reported with its
count and reason, shutdown and exit keep their deadline, and memory stays bounded."""

from __future__ import annotations

import os
import re
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector, FaultPlan
from tests.reliability.support import LONG, WRITE_KEY, Script, write_report

SOAK_SECONDS = float(os.environ.get("KLIME_SOAK_SECONDS", "300" if LONG else "60"))
SOAK_RATE = 1000  # events a second


class Reported:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[int] = []
        self.errors: list[BaseException] = []

    def __call__(self, error: BaseException, events: list[dict[str, Any]]) -> None:
        with self.lock:
            self.batches.append(len(events))
            self.errors.append(error)

    @property
    def events(self) -> int:
        return sum(self.batches)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with Collector(db=tmp_path / "events.sqlite3") as running:
        yield running


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Connections complete (the kernel's backlog) and are never answered."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


DOWN_KINDS = ["refused", "503", "black_hole"]


def down_endpoint(kind: str, collector: Collector, black_hole: str) -> str:
    if kind == "refused":
        collector.down()
    elif kind == "503":
        collector.faults = FaultPlan(error_rate=1.0)
    else:
        return black_hole
    return collector.url


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", DOWN_KINDS)
def test_events_past_the_last_retry_are_reported_with_their_count_and_reason(
    collector: Collector, black_hole: str, kind: str
) -> None:
    reported = Reported()
    client = KlimeClient(
        WRITE_KEY,
        down_endpoint(kind, collector, black_hole),
        retry_max_attempts=3,
        retry_initial_delay=10,
        max_batch_size=15,  # chosen, so a hard cap: three batches
        timeout=0.2,
        on_error=reported,
    )
    for n in range(45):
        client.track("Down", {"n": n}, user_id="u")

    # The batches share one backoff (10 ms doubling over 9 attempts: ~2 s in all),
    # and each is given up after 3 attempts of its own.
    assert client.flush(30) is False

    stats = client.stats()
    assert reported.batches == [15, 15, 15]
    assert all("failed after 3 attempts" in str(error) for error in reported.errors)
    assert stats.dropped == {"retries_exhausted": 45}
    assert (stats.failed, stats.sent, stats.retries, stats.queued) == (45, 0, 6, 0)

    # The sender lived through it: once the server is back, new events go out.
    if kind == "refused":
        collector.up()
    collector.faults = FaultPlan()
    client = KlimeClient(WRITE_KEY, collector.url) if kind == "black_hole" else client
    client.track("Back", {"n": 45}, user_id="u")
    assert client.flush(10)
    assert client.stats().sent == 1
    assert collector.stats().stored == 1
    client.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", DOWN_KINDS)
def test_shutdown_keeps_its_deadline_and_reports_what_it_could_not_send(
    collector: Collector, black_hole: str, kind: str
) -> None:
    reported = Reported()
    client = KlimeClient(
        WRITE_KEY,
        down_endpoint(kind, collector, black_hole),
        retry_max_attempts=20,
        retry_initial_delay=500,
        timeout=10.0,  # longer than the deadline: the deadline must cut the attempt
        shutdown_timeout=1.0,
        on_error=reported,
    )
    for n in range(500):
        client.track("Down", {"n": n}, user_id="u")
    deadline = time.monotonic() + 20
    worker = client._worker.get()
    while worker._in_flight is None:  # until the sender has a batch in flight
        assert time.monotonic() < deadline, "the sender never started"
        time.sleep(0.01)

    started = time.monotonic()
    delivered = client.shutdown()
    took = time.monotonic() - started

    assert delivered is False
    assert took < 1.0 + 4.0  # the deadline plus generous slack; the attempt alone is 10 s
    assert reported.events == 500
    stats = client.stats()
    assert sum(stats.dropped.values()) == stats.failed == 500
    # A black hole takes the request and never answers: the batch in flight may have
    # arrived for all the client knows, so it is counted apart (answer_unknown).
    reasons = {"shutdown_timeout", "answer_unknown"} if kind == "black_hole" else None
    assert set(stats.dropped) == (reasons or {"shutdown_timeout"})
    assert stats.dropped.get("answer_unknown", 0) <= client.options.max_batch_size
    errors = {getattr(error, "reason", None) for error in reported.errors}
    assert errors == (reasons or {"shutdown_timeout"})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["refused", "black_hole"])
def test_the_process_exits_promptly_when_the_server_is_down(
    collector: Collector, black_hole: str, kind: str
) -> None:
    endpoint = down_endpoint(kind, collector, black_hole)
    script = Script("exit_server_down.py", endpoint, "800")
    try:
        assert script.read() == {"tracked": 800}
        tracked_at = time.monotonic()
        assert script.wait(20) == 0
        exit_took = time.monotonic() - tracked_at
        stderr = script.stderr()
    finally:
        script.kill()

    reported = sum(int(n) for n in re.findall(r"^on_error (\d+)", stderr, re.MULTILINE))
    write_report(
        f"exit_server_down_{kind}",
        {"events_queued": 800, "events_reported_lost": reported, "exit_seconds": exit_took},
    )
    assert exit_took < 1.5 + 5.0  # shutdown_timeout plus teardown (an attempt alone is 5 s)
    assert reported == 800, stderr


def _median_rss(samples: list[dict[str, float]], start: float, end: float) -> float:
    return statistics.median(s["rss"] for s in samples if start <= s["t"] < end)


@pytest.mark.timeout(SOAK_SECONDS + 60)
def test_memory_stays_flat_while_the_server_is_down_at_1000_events_a_second(
    collector: Collector,
) -> None:
    collector.faults = FaultPlan(error_rate=1.0)  # down behind a load balancer: all 503
    script = Script("soak.py", collector.url, str(SOAK_SECONDS), str(SOAK_RATE))
    try:
        result = script.read()
        assert script.wait(30) == 0
    finally:
        script.kill()

    samples = result["samples"]
    mib = 1024 * 1024
    early = _median_rss(samples, 5, 15)
    late = _median_rss(samples, SOAK_SECONDS - 10, SOAK_SECONDS + 1)
    settled = [s["rss"] for s in samples if s["t"] >= 5]
    figures = {
        "seconds": result["seconds"],
        "events_tracked": result["tracked"],
        "events_enqueued": result["enqueued"],
        "dropped": result["dropped"],
        "max_queued": max(s["queued"] for s in samples),
        "rss_mib_first_sample": round(samples[0]["rss"] / mib, 1),
        "rss_mib_median_5_15s": round(early / mib, 2),
        "rss_mib_median_last_10s": round(late / mib, 2),
        "rss_mib_min_max_after_5s": [round(min(settled) / mib, 2), round(max(settled) / mib, 2)],
        "shutdown_seconds": result["shutdown_seconds"],
        "on_error": result["on_error"],
    }
    write_report("soak_server_down", figures)

    assert result["tracked"] >= 0.9 * SOAK_RATE * SOAK_SECONDS  # the rate was held
    # the queue cap holds: 1,000 waiting, plus the one batch (at most 100) in flight
    assert max(s["queued"] for s in samples) <= 1000 + 100
    dropped = result["dropped"]
    assert dropped["queue_full"] > 0.9 * result["tracked"]
    # Every tracked event is accounted for: queued and then failed, or dropped when full.
    assert result["enqueued"] + dropped["queue_full"] == result["tracked"]
    # ...and every lost one reaches on_error, the full queue's included.
    assert result["on_error"]["events"] == sum(dropped.values())
    assert late - early < 2 * mib, figures  # flat: no growth per event
    assert max(settled) - min(settled) < 4 * mib, figures
    assert result["shutdown_seconds"] < 1.5
