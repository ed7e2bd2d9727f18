"""An outage is one outage: one shared backoff, a bounded and honest flush(), nothing
dropped that can wait; and a burst with default options is not mostly lost.

Every loss has a reason in ``stats().dropped`` and reaches ``on_error``: each test
checks the accounting identity tracked = delivered + reported (+ still queued)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.collector.faults import FaultPlan
from tests.conftest import CollectorProcess
from tests.scripted_server import Reply, ScriptedServer

KEY = "outage-key"


class Reports:
    """on_error's calls, counted in events (a LossReport may carry more than it attaches)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = 0
        self.reasons: dict[str, int] = {}

    def __call__(self, error: BaseException, events: list[dict[str, Any]]) -> None:
        count = getattr(error, "count", len(events))
        reason = getattr(error, "reason", type(error).__name__)
        with self.lock:
            self.events += count
            self.reasons[reason] = self.reasons.get(reason, 0) + count


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def test_a_failed_batch_makes_the_next_one_wait_for_the_same_backoff(
    server: ScriptedServer,
) -> None:
    # One attempt per batch and a 1 s backoff (0.5-1 s with jitter): without a shared
    # backoff, the 50 batches would be posted and dropped one after another at once.
    server.then(*[Reply(503)] * 100)
    client = KlimeClient(KEY, server.url, retry_max_attempts=1, max_batch_size=20)
    for n in range(1000):
        client.track("Down", {"n": n}, user_id="u")
    assert client.flush(0.4) is False
    assert len(server.received) == 1  # one probe, then everyone waits
    assert client.stats().dropped == {"retries_exhausted": 20}
    assert client.stats().queued == 980  # the rest waits in the queue, not dropped
    client.shutdown()


def test_retry_after_pauses_the_whole_client(server: ScriptedServer) -> None:
    server.then(Reply(429, headers=(("Retry-After", "30"),)))
    client = KlimeClient(KEY, server.url, retry_max_attempts=1, max_batch_size=5)
    for _ in range(20):
        client.track("Paused", user_id="u")
    assert client.flush(1.0) is False
    assert len(server.received) == 1  # the other three batches keep to the pause
    assert client.shutdown() is False


@pytest.mark.timeout(60)
def test_flush_returns_within_ten_seconds_and_shutdown_within_five_more(
    server: ScriptedServer,
) -> None:
    # Server down, defaults, a full queue: flush() without a timeout must not take
    # one retry window per batch (about 12 minutes for 1,000 events).
    server.then(*[Reply(503)] * 1000)
    reports = Reports()
    client = KlimeClient(KEY, server.url, on_error=reports)
    for n in range(1000):
        client.track("Down", {"n": n}, user_id="u")

    started = time.monotonic()
    assert client.flush() is False  # nothing was delivered: it must not say True
    flushed = time.monotonic() - started
    assert client.stats().queued >= 900  # still queued, not dropped
    assert client.shutdown() is False
    total = time.monotonic() - started

    assert 9.0 <= flushed <= 11.0
    assert total <= 16.0
    stats = client.stats()
    assert stats.sent == 0 and stats.queued == 0
    assert sum(stats.dropped.values()) == 1000 == reports.events  # all reported


def test_flush_says_true_only_when_everything_was_delivered(server: ScriptedServer) -> None:
    server.then(Reply(400, body=b'{"status":"error"}'))
    client = KlimeClient(KEY, server.url)
    client.track("Refused", user_id="u")
    assert client.flush(5) is False
    client.track("Fine", user_id="u")
    assert client.flush(5) is True
    assert client.shutdown() is True


@pytest.mark.timeout(120)
def test_a_thirty_second_outage_at_40_events_a_second_loses_at_most_one_batch(
    collector: Collector,
) -> None:
    reports = Reports()
    client = KlimeClient(KEY, collector.url, on_error=reports)
    tracked = 0

    def track_for(seconds: float) -> None:
        nonlocal tracked
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            while tracked < 40 * elapsed:
                client.track("Steady", {"n": tracked}, user_id="u")
                tracked += 1
            time.sleep(0.005)  # pacing the load, not synchronisation

    track_for(2)
    collector.faults = FaultPlan(error_rate=1.0)  # down behind a load balancer: 503s
    track_for(30)
    collector.faults = FaultPlan()
    track_for(2)
    # The next probe is due within the backoff cap (16 s) of the last failure.
    client.flush(30)
    client.shutdown()
    stats = client.stats()

    delivered = collector.stats().stored
    assert stats.dropped.get("queue_full", 0) == 0
    assert tracked - delivered <= 100  # at most the one batch that ran out of attempts
    assert delivered + reports.events == tracked  # and that one is reported
    assert sum(stats.dropped.values()) == reports.events


def test_a_20000_event_burst_with_default_options_is_delivered(
    collector_process: CollectorProcess,
) -> None:
    # The collector in its own process, as a real server is: in this one it would take
    # the GIL from the sender for every batch it stores.
    reports = Reports()
    client = KlimeClient(KEY, collector_process.url, on_error=reports)
    for n in range(20_000):
        client.track("Burst", {"n": n}, user_id="u")
    client.flush(60)
    client.shutdown()
    delivered = collector_process.stats()["stored"]
    # It was 1,100 with 20-event batches and a 1,000-event queue. Now a 10,000-event
    # queue (Segment's and PostHog's default) and 100-event batches under a backlog:
    # 13,000-16,000 measured on 2 cores; a spool_dir loses none (tests/test_spool_client.py).
    assert delivered >= 10_000
    assert delivered + reports.events == 20_000
