"""Batching, flush/shutdown semantics, the bounded queue, keep-alive, the module API."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import klime_mp
from klime_mp import KlimeClient
from klime_mp.collector import Collector, FaultPlan
from tests.scripted_server import Reply, ScriptedServer


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def test_events_reach_the_collector(collector: Collector) -> None:
    with KlimeClient("key", endpoint=collector.url) as client:
        client.identify("usr_1", {"email": "jane@acme.com"})
        client.group("org_1", {"name": "Acme"}, user_id="usr_1")
        client.track("Report Generated", {"report_type": "revenue"}, user_id="usr_1")
    stored = collector.events()
    assert [e["type"] for e in stored] == ["identify", "group", "track"]
    assert collector.stats().duplicates == 0


def test_a_full_batch_is_sent_without_waiting_for_the_interval(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url, max_batch_size=5, flush_interval=60_000)
    for n in range(5):
        client.track("A", {"n": n}, user_id="u")
    deadline = time.monotonic() + 10
    while not server.received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [len(r.events()) for r in server.received] == [5]
    client.shutdown()


def test_batches_hold_at_most_max_batch_size(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url, max_batch_size=5, flush_interval=60_000)
    with client._worker.get()._send_lock:  # hold the sender so all 12 queue up first
        for n in range(12):
            client.track("A", {"n": n}, user_id="u")
    assert client.flush(10)
    assert [len(r.events()) for r in server.received] == [5, 5, 2]
    assert [e["properties"]["n"] for e in server.all_events()] == list(range(12))  # in order


def test_by_default_a_batch_waits_for_100_events(server: ScriptedServer) -> None:
    # Not the official SDK's 20: one POST for every 100 events under load.
    client = KlimeClient("key", endpoint=server.url, flush_interval=60_000)
    for n in range(99):
        client.track("A", {"n": n}, user_id="u")
    assert client.queue_size() == 99  # the sender waits for a full batch (or the interval)
    assert not server.received
    for n in range(99, 250):
        client.track("A", {"n": n}, user_id="u")
    assert client.flush(10)
    sizes = [len(r.events()) for r in server.received]
    assert max(sizes) == 100 and sum(sizes) == 250 and sizes[0] == 100
    client.shutdown()


def test_a_partial_batch_is_sent_after_flush_interval(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url, flush_interval=100)
    client.track("A", user_id="u")
    deadline = time.monotonic() + 10
    while not server.received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.received) == 1
    client.shutdown()


def test_flush_returns_once_everything_before_it_is_settled(collector: Collector) -> None:
    client = KlimeClient("key", endpoint=collector.url, flush_interval=60_000)
    for n in range(50):
        client.track("A", {"n": n}, user_id="u")
    assert client.flush() is True
    assert collector.stats().stored == 50
    assert client.queue_size() == 0
    assert client.stats().sent == 50


def test_flush_says_when_the_timeout_passed_first(server: ScriptedServer) -> None:
    server.then(Reply(delay=2.0))
    client = KlimeClient("key", endpoint=server.url, flush_interval=60_000)
    client.track("A", user_id="u")
    assert client.flush(timeout=0.2) is False
    assert client.flush(timeout=10) is True


def test_flush_with_nothing_tracked_returns_at_once() -> None:
    assert KlimeClient("key").flush() is True


def test_track_never_waits_on_the_network(server: ScriptedServer) -> None:
    server.then(*[Reply(delay=3.0)] * 3)
    client = KlimeClient("key", endpoint=server.url, max_batch_size=1, shutdown_timeout=1)
    started = time.monotonic()
    for _ in range(200):  # every call fills a batch; the sender is stuck in a slow reply
        client.track("A", user_id="u")
    # Blocking on the network would cost 3 s (the reply's delay); 200 appends take
    # milliseconds. The bound is generous for a loaded machine and still below 3 s.
    assert time.monotonic() - started < 2.5
    client.shutdown()


def test_a_full_queue_drops_new_events_and_counts_them(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url, max_queue_size=10, flush_interval=60_000)
    with client._worker.get()._send_lock:  # the sender is busy: nothing leaves the queue
        for n in range(25):
            client.track("A", {"n": n}, user_id="u")
        assert client.queue_size() == 10
        assert client.stats().dropped == {"queue_full": 15}
        assert client.stats().enqueued == 10
    assert client.flush(10) is False  # 15 were lost: flush() must not say "all sent"
    assert [e["properties"]["n"] for e in server.all_events()] == list(range(10))  # oldest kept
    client.track("A", {"n": 25}, user_id="u")
    assert client.flush(10) is True  # nothing lost since the previous flush()


def test_queue_full_warns_at_most_once_a_second(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = KlimeClient("key", endpoint=server.url, max_queue_size=1, flush_interval=60_000)
    with client._worker.get()._send_lock:
        for _ in range(500):
            client.track("A", user_id="u")
    client.flush(10)  # the sender reports the parked losses
    warnings = [r for r in caplog.records if "queue_full" in r.getMessage()]
    assert len(warnings) == 1
    assert "499 events dropped (queue_full)" in warnings[0].getMessage()
    client.shutdown()


def test_batches_share_one_keep_alive_connection(collector: Collector) -> None:
    client = KlimeClient("key", endpoint=collector.url, max_batch_size=10, flush_interval=60_000)
    for n in range(100):
        client.track("A", {"n": n}, user_id="u")
        if n % 10 == 9:
            assert client.flush(10)
    stats = collector.stats()
    assert stats.stored == 100 and stats.requests == 10
    assert stats.connections == 1


def test_send_false_validates_and_counts_but_sends_nothing(collector: Collector) -> None:
    client = KlimeClient("key", endpoint=collector.url, send=False)
    client.track("A", user_id="u")
    with pytest.raises(ValueError):
        client.track("A")
    assert client.track_sync("A", user_id="u").status == "not_sent"
    assert client.flush() and client.shutdown()
    assert client.stats().enqueued == 1
    assert collector.stats().requests == 0


def test_shutdown_with_the_server_down_is_bounded_and_reports_the_rest() -> None:
    with socket.socket() as sock:  # accepts connections, never answers: the worst case
        sock.bind(("127.0.0.1", 0))
        sock.listen(100)
        errors: list[tuple[BaseException, list[dict[str, Any]]]] = []
        client = KlimeClient(
            "key",
            endpoint=f"http://127.0.0.1:{sock.getsockname()[1]}",
            shutdown_timeout=1,
            on_error=lambda e, evs: errors.append((e, evs)),
        )
        for n in range(300):
            client.track("A", {"n": n}, user_id="u")
        started = time.monotonic()
        assert client.shutdown() is False
        assert time.monotonic() - started < 5
    reported = sum(len(events) for _, events in errors)
    stats = client.stats()
    in_flight = 300 - reported  # a batch still waiting on the silent server, if any
    assert in_flight <= client.options.max_batch_size
    # The batch whose request was out, unanswered, is counted apart: it may have arrived.
    given_up = stats.dropped.get("shutdown_timeout", 0) + stats.dropped.get("answer_unknown", 0)
    assert given_up == reported
    assert stats.dropped.get("answer_unknown", 0) <= client.options.max_batch_size


def test_shutdown_is_idempotent_and_later_events_are_counted(collector: Collector) -> None:
    client = KlimeClient("key", endpoint=collector.url)
    client.track("A", user_id="u")
    assert client.shutdown() is True
    assert client.shutdown() is True
    client.track("B", user_id="u")
    assert client.stats().dropped == {"after_shutdown": 1}
    assert collector.stats().stored == 1


def test_context_manager_shuts_down_on_exit(collector: Collector) -> None:
    with KlimeClient("key", endpoint=collector.url, flush_interval=60_000) as client:
        client.track("A", user_id="u")
    assert collector.stats().stored == 1


def test_stats_snapshot_is_consistent_under_concurrent_tracking(collector: Collector) -> None:
    client = KlimeClient("key", endpoint=collector.url, max_queue_size=100_000)
    threads = [
        threading.Thread(target=lambda: [client.track("A", user_id="u") for _ in range(500)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(30)
    stats = client.stats()
    assert stats.enqueued == 2000 and stats.sent == 2000 and stats.queued == 0
    assert collector.stats().stored == 2000 and collector.stats().duplicates == 0


@pytest.fixture
def default_client() -> Iterator[None]:
    yield
    klime_mp.shutdown()
    klime_mp.default._default = None


def test_configure_starts_nothing_and_the_first_event_starts_the_sender(
    collector: Collector, default_client: None
) -> None:
    before = threading.active_count()
    client = klime_mp.configure("key", endpoint=collector.url, flush_interval=60_000)
    assert threading.active_count() == before
    assert klime_mp.get_client() is client
    klime_mp.track("A", {"x": 1}, user_id="u")
    klime_mp.identify("u", {"name": "Jane"})
    klime_mp.group("g", user_id="u")
    assert threading.active_count() == before + 1
    assert klime_mp.flush(10)
    assert collector.stats().stored == 3


def test_get_client_without_configuration_explains_what_to_do(default_client: None) -> None:
    with pytest.raises(ValueError, match=r"write_key is required.*configure\(\)"):
        klime_mp.get_client()


def test_get_client_reads_the_environment(
    collector: Collector, default_client: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLIME_WRITE_KEY", "env-key")
    monkeypatch.setenv("KLIME_ENDPOINT", collector.url)
    klime_mp.track("A", user_id="u")
    assert klime_mp.flush(10)
    assert collector.stats().stored == 1


def test_configure_again_flushes_the_previous_client(
    collector: Collector, default_client: None
) -> None:
    klime_mp.configure("key", endpoint=collector.url, flush_interval=60_000)
    klime_mp.track("A", user_id="u")
    klime_mp.configure("key", endpoint=collector.url)
    assert collector.stats().stored == 1


def test_faulty_collector_is_survived(collector: Collector) -> None:
    collector.faults = FaultPlan(seed=1, error_rate=0.5)
    client = KlimeClient(
        "key", endpoint=collector.url, retry_initial_delay=5, retry_max_attempts=10
    )
    for n in range(100):
        client.track("A", {"n": n}, user_id="u")
    assert client.flush(30)
    assert collector.stats().stored == 100
    assert client.stats().retries > 0


def test_a_client_that_was_shut_down_releases_its_worker(collector: Collector) -> None:
    import gc
    import weakref

    client = KlimeClient("key", endpoint=collector.url)
    client.track("A", user_id="u")
    assert client.shutdown()
    worker = weakref.ref(client._worker)  # what the exit-flush registry would keep alive
    del client
    gc.collect()
    assert worker() is None


def test_a_full_batch_wakes_the_sender_for_full_batches_only(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url, max_batch_size=5, flush_interval=60_000)
    with client._worker.get()._send_lock:  # let all 7 queue up before the sender looks
        for n in range(7):
            client.track("A", {"n": n}, user_id="u")
    deadline = time.monotonic() + 10
    while not server.received and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for a wrong second request to show up
    assert [len(r.events()) for r in server.received] == [5]
    assert client.queue_size() == 2  # the remainder waits for the next batch or the interval
    assert client.flush(10)
    assert [len(r.events()) for r in server.received] == [5, 2]


def test_no_event_waits_longer_than_flush_interval_under_steady_load(
    server: ScriptedServer,
) -> None:
    client = KlimeClient("key", endpoint=server.url, max_batch_size=10, flush_interval=300)
    started = time.monotonic()
    for n in range(25):  # 2 full batches at once, then a remainder of 5
        client.track("A", {"n": n}, user_id="u")
    while len(server.all_events()) < 25 and time.monotonic() - started < 10:
        time.sleep(0.01)
    assert len(server.all_events()) == 25
    assert [len(r.events()) for r in server.received][-1] == 5
    client.shutdown()


def test_a_batch_body_stays_under_10_mb(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url, max_batch_size=100, flush_interval=60_000)
    blob = "x" * 150_000  # under the 200 KB event limit; 100 of them are 15 MB
    with client._worker.get()._send_lock:
        for n in range(100):
            client.track("Big", {"n": n, "blob": blob}, user_id="u")
    assert client.flush(60)
    sizes = [len(r.body) for r in server.received]
    assert len(sizes) >= 2 and max(sizes) <= 10 * 1024 * 1024
    assert sorted(e["properties"]["n"] for e in server.all_events()) == list(range(100))
