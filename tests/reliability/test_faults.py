"""The client against each fault the collector can inject, one at a time, then healed:
every event stored exactly once, raw duplicates only where the client could not know
that a batch had arrived, the caller never waits, the sender never dies."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector, FaultPlan
from tests.reliability.support import (
    WRITE_KEY,
    assert_duplicates_explained,
    fault_figures,
    script_env,
    write_report,
)

pytestmark = pytest.mark.timeout(60)

EVENTS = 300
PATIENT = {"retry_max_attempts": 12, "retry_initial_delay": 10, "max_batch_size": 10}


class Outcomes:
    """What the client reported through its callbacks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.successes = 0
        self.errors: list[tuple[BaseException, int]] = []

    def on_success(self, response: Any) -> None:
        with self.lock:
            self.successes += 1

    def on_error(self, error: BaseException, events: list[dict[str, Any]]) -> None:
        with self.lock:
            self.errors.append((error, len(events)))


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with Collector(db=tmp_path / "events.sqlite3") as running:
        yield running


def client_for(url: str, outcomes: Outcomes, **options: Any) -> KlimeClient:
    merged: dict[str, Any] = {
        **PATIENT,
        "flush_interval": 50,
        "on_success": outcomes.on_success,
        "on_error": outcomes.on_error,
        **options,
    }
    return KlimeClient(WRITE_KEY, url, **merged)


def track_numbered(client: KlimeClient, count: int, start: int = 0) -> float:
    """Track ``count`` events numbered from ``start``; the slowest call, in seconds."""
    slowest = 0.0
    for n in range(start, start + count):
        began = time.perf_counter()
        client.track("Fault Test", {"n": n}, user_id=f"usr_{n % 7}")
        slowest = max(slowest, time.perf_counter() - began)
    return slowest


def stored_numbers(collector: Collector) -> list[int]:
    return sorted(event["properties"]["n"] for event in collector.events())


FAULTS = {
    "503": FaultPlan(seed=1, error_rate=0.3),
    "500": FaultPlan(seed=2, error_rate=0.3, status=500),
    "429_retry_after_seconds": FaultPlan(seed=3, rate_limit_rate=0.3, retry_after="0.05"),
    "dropped_before_store": FaultPlan(seed=4, drop_rate=0.3),
    "dropped_after_store": FaultPlan(seed=5, drop_after_store_rate=0.3),
    "garbage_200": FaultPlan(seed=6, garbage_rate=0.3),
    "slow": FaultPlan(seed=7, delay=0.2, delay_rate=0.3),
    "slower_than_the_timeout": FaultPlan(seed=8, delay=1.0, delay_rate=0.2),
    "all_at_once": FaultPlan(
        seed=9,
        error_rate=0.1,
        rate_limit_rate=0.05,
        retry_after="0",
        drop_rate=0.05,
        drop_after_store_rate=0.05,
        garbage_rate=0.05,
        delay=0.6,
        delay_rate=0.05,
    ),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_each_fault_then_healed_stores_every_event_exactly_once(
    collector: Collector, outcomes: Outcomes, name: str
) -> None:
    collector.faults = FAULTS[name]
    client = client_for(collector.url, outcomes, timeout=0.4)

    slowest = track_numbered(client, EVENTS)
    assert client.flush(30)
    collector.faults = FaultPlan()
    assert client.shutdown()

    stats = collector.stats()
    write_report(
        f"fault_{name}",
        {
            "events_tracked": EVENTS,
            "slowest_track_ms": round(slowest * 1000, 2),
            **fault_figures(stats),
        },
    )
    assert stored_numbers(collector) == list(range(EVENTS))
    assert client.stats().sent == EVENTS and not client.stats().dropped
    assert outcomes.errors == []
    assert stats.faults_injected  # the fault did happen
    assert_duplicates_explained(stats)
    if name == "garbage_200":
        assert stats.duplicates == 0  # a 200 is an answer, even an unreadable one
    # track() never waited on the network: a generous bound for a loaded machine (the
    # exact check is test_client's test_track_never_waits_on_the_network).
    assert slowest < 2.0


@pytest.mark.parametrize("as_date", [False, True], ids=["seconds", "http_date"])
def test_retry_after_is_honoured(collector: Collector, outcomes: Outcomes, as_date: bool) -> None:
    # retry_initial_delay is 10 ms: only Retry-After can explain a wait of a second.
    collector.faults = FaultPlan(rate_limit_rate=1.0, retry_after="2", retry_after_as_date=as_date)
    client = client_for(collector.url, outcomes)

    tracked_at = time.time()
    client.track("Rate Limited", {"n": 0}, user_id="u")
    deadline = time.monotonic() + 5
    while not collector.stats().faults_injected and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.faults = FaultPlan()
    assert client.flush(10)

    db = collector.events()
    assert len(db) == 1
    waited = time.time() - tracked_at
    assert waited >= 1.0  # an HTTP date has whole seconds: 2 s ahead is 1 to 2 s away
    assert client.stats().retries == 1
    client.shutdown()


def test_a_long_retry_after_cannot_hold_shutdown_hostage(
    collector: Collector, outcomes: Outcomes
) -> None:
    collector.faults = FaultPlan(rate_limit_rate=1.0, retry_after="3600")
    client = client_for(collector.url, outcomes, shutdown_timeout=1.0)
    track_numbered(client, 25)
    deadline = time.monotonic() + 5
    while not collector.stats().faults_injected and time.monotonic() < deadline:
        time.sleep(0.01)

    started = time.monotonic()
    assert client.shutdown() is False

    assert time.monotonic() - started < 1.0 + 4.0  # shutdown_timeout, not the hour asked
    assert sum(count for _error, count in outcomes.errors) == 25
    assert sum(client.stats().dropped.values()) == 25


def test_the_collector_goes_away_and_comes_back(collector: Collector, outcomes: Outcomes) -> None:
    client = client_for(collector.url, outcomes)
    track_numbered(client, 50)
    assert client.flush(10)

    with collector.outage():
        slowest = track_numbered(client, 100, start=50)
        # How long the outage lasts, not synchronisation: nothing below depends on the
        # sender having met it by then (stats().retries, checked below, shows it did).
        time.sleep(0.5)
    assert client.flush(30)
    client.shutdown()

    assert stored_numbers(collector) == list(range(150))
    assert client.stats().retries > 0
    assert outcomes.errors == []
    assert slowest < 2.0  # as above: generous; track() only appends
    assert collector.stats().duplicates == 0


def _start_cli(port: int, db: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "klime_mp", "collector", "--port", str(port), "--db", str(db)]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=script_env(), start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc, line.strip().rsplit(" ", 1)[-1]


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_restarted_collector_process_on_the_same_port_and_database(
    tmp_path: Path, outcomes: Outcomes
) -> None:
    db = tmp_path / "events.sqlite3"
    first, url = _start_cli(0, db)
    second = None
    try:
        client = client_for(url, outcomes, retry_initial_delay=100)
        track_numbered(client, 40)
        assert client.flush(10)
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0

        track_numbered(client, 60, start=40)  # queued while nothing listens
        time.sleep(0.3)  # how long nothing listens (a scenario, not synchronisation)
        second, url_again = _start_cli(int(url.rsplit(":", 1)[1]), db)
        assert url_again == url
        assert client.flush(30)
        client.shutdown()
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        _kill(first)
        if second is not None:
            _kill(second)

    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT json_extract(body, '$.properties.n') FROM events").fetchall()
    assert sorted(n for (n,) in rows) == list(range(100))
    assert outcomes.errors == []
