"""The worker's behaviours that its mutation run found untested (docs/testing.md).

Each test pins one decision of ``klime_mp/delivery/worker.py`` that a surviving mutant changed
without any test noticing: what the ``*_sync`` methods count and raise, which events of
a partly refused batch are reported, what stays on disk with a spool, and how shutdown
words what it gives up. All of them talk to a real loopback server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from klime_mp import KlimeClient, SendError
from klime_mp.delivery.settle import rejected_events
from klime_mp.errors import EventTooLargeError
from klime_mp.responses import BatchResponse, ValidationError
from klime_mp.spool.log import status as spool_status
from tests.scripted_server import Reply, ScriptedServer

Report = tuple[BaseException, list[dict[str, Any]]]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def ok_body(accepted: int, failed: int = 0, errors: list[dict[str, Any]] | None = None) -> bytes:
    body: dict[str, Any] = {"status": "ok", "accepted": accepted, "failed": failed}
    if errors is not None:
        body["errors"] = errors
    return json.dumps(body).encode()


def numbers(events: list[dict[str, Any]]) -> list[int]:
    return [event["properties"]["n"] for event in events]


def reporting_client(server: ScriptedServer, **options: Any) -> tuple[KlimeClient, list[Report]]:
    """A client of ``server`` whose on_error calls are collected, in order."""
    reports: list[Report] = []
    client = KlimeClient(
        "key", server.url, on_error=lambda e, evs: reports.append((e, evs)), **options
    )
    return client, reports


# -- the *_sync methods (Worker.send_now) ------------------------------------------------


def test_a_sync_send_returns_the_servers_answer_and_counts_its_retry(
    server: ScriptedServer,
) -> None:
    server.then(Reply(503), Reply(200, ok_body(1)))
    client = KlimeClient("key", server.url, retry_initial_delay=10)
    response = client.track_sync("Sync", {"n": 7}, user_id="u")
    assert response == BatchResponse(status="ok", accepted=1, failed=0, errors=None)
    assert [numbers(r.events()) for r in server.received] == [[7], [7]]
    stats = client.stats()
    assert (stats.sent, stats.batches, stats.retries, stats.failed) == (1, 1, 1, 0)
    assert stats.dropped == {}
    client.shutdown()


@pytest.mark.parametrize(("failed", "sent"), [(1, 0), (3, 0), (-1, 1)])
def test_a_sync_send_counts_the_event_as_sent_unless_the_server_refused_it(
    server: ScriptedServer, failed: int, sent: int
) -> None:
    # The answer's count is clamped to the one event sent: 3 cannot make it -2, -1 not 2.
    server.then(Reply(200, ok_body(1 - max(failed, 0), failed)))
    client = KlimeClient("key", server.url)
    assert client.track_sync("Sync", user_id="u").failed == failed
    stats = client.stats()
    assert (stats.sent, stats.batches) == (sent, 1)
    client.shutdown()


def test_a_refused_sync_send_raises_with_the_event_and_counts_it(server: ScriptedServer) -> None:
    server.then(Reply(400, b'{"status":"error","message":"bad write key"}'))
    client, reports = reporting_client(server)
    with pytest.raises(SendError) as raised:
        client.track_sync("Sync", {"n": 3}, user_id="u")
    assert str(raised.value).startswith("rejected with HTTP 400: ")
    assert "bad write key" in str(raised.value)
    assert numbers(raised.value.events) == [3]
    stats = client.stats()
    assert (stats.sent, stats.batches, stats.retries, stats.failed) == (0, 0, 0, 1)
    assert stats.dropped == {"rejected": 1}
    assert reports == []  # the caller has the error: on_error is for background losses
    client.shutdown()


def test_a_sync_send_out_of_attempts_counts_its_retries(server: ScriptedServer) -> None:
    server.then(Reply(503), Reply(503))
    client = KlimeClient("key", server.url, retry_max_attempts=2, retry_initial_delay=10)
    with pytest.raises(SendError, match="failed after 2 attempts"):
        client.track_sync("Sync", user_id="u")
    stats = client.stats()
    assert (stats.retries, stats.failed, stats.dropped) == (1, 1, {"retries_exhausted": 1})
    client.shutdown()


def test_a_sync_send_with_send_false_answers_not_sent(server: ScriptedServer) -> None:
    client = KlimeClient("key", server.url, send=False)
    response = client.track_sync("Local", user_id="u")
    assert response == BatchResponse(status="not_sent", accepted=0, failed=0, errors=None)
    assert (client.stats().sent, server.received) == (0, [])
    client.shutdown()


def test_a_sync_send_after_shutdown_raises_without_sending(server: ScriptedServer) -> None:
    client = KlimeClient("key", server.url)
    client.shutdown()
    with pytest.raises(SendError) as raised:
        client.track_sync("Late", user_id="u")
    assert (raised.value.message, raised.value.events) == ("Client is shutdown", [])
    assert server.received == []


# -- losses before the queue and in a delivered batch ---------------------------------------


def test_an_oversized_event_reaches_on_error_with_its_reason(server: ScriptedServer) -> None:
    client, reports = reporting_client(server)
    client.track("Big", {"blob": "x" * 200 * 1024}, user_id="u")
    [(error, events)] = reports
    assert isinstance(error, EventTooLargeError)
    assert [event["event"] for event in events] == ["Big"]
    stats = client.stats()
    assert (stats.enqueued, stats.failed, stats.dropped) == (0, 0, {"oversized": 1})
    client.shutdown()
    assert server.received == []


def batch_of(count: int) -> list[bytes]:
    return [str(n).encode() for n in range(count)]


def answer(failed: int, *indices: int) -> BatchResponse:
    errors = [ValidationError(i, "bad", "invalid") for i in indices] or None
    return BatchResponse(status="ok", accepted=5 - failed, failed=failed, errors=errors)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (answer(0), []),
        (answer(-1), []),
        (answer(2, 3, 1), [b"1", b"3"]),  # by index, in batch order
        (answer(2, 0, 4), [b"0", b"4"]),  # both ends of the batch
        (answer(2, 0, 5, 4), [b"0", b"4"]),  # index 5 is past the end: ignored
        (answer(2, -1, 2), [b"3", b"4"]),  # indices that do not add up: the last ones
        (answer(2, 2, 2), [b"3", b"4"]),
        (answer(2), [b"3", b"4"]),  # a count without indices
        (answer(9), batch_of(5)),  # more than were sent: all of them
    ],
)
def test_the_refused_events_of_a_delivered_batch(
    response: BatchResponse, expected: list[bytes]
) -> None:
    assert rejected_events(batch_of(5), response) == expected


def test_a_partly_refused_batch_reports_only_the_refused_events(server: ScriptedServer) -> None:
    errors = [{"index": 3, "message": "bad", "code": "invalid"}, {"index": 1, "message": "bad"}]
    server.then(Reply(200, ok_body(3, 2, errors)))
    reports: list[Report] = []
    successes: list[BatchResponse] = []
    client = KlimeClient(
        "key",
        server.url,
        on_error=lambda e, evs: reports.append((e, evs)),
        on_success=successes.append,
    )
    for n in range(5):
        client.track("Partly", {"n": n}, user_id="u")
    assert client.flush(10) is False  # two were lost
    [(error, events)] = reports
    assert str(error).startswith("the server rejected 2 of 5 events: [ValidationError(index=3")
    assert (getattr(error, "reason", None), getattr(error, "status", None)) == ("rejected", 200)
    assert numbers(events) == [1, 3]
    assert [s.accepted for s in successes] == [3]
    stats = client.stats()
    assert (stats.sent, stats.batches, stats.failed, stats.dropped) == (3, 1, 0, {"rejected": 2})
    client.shutdown()


# -- what a failed batch becomes: lost from memory, kept on disk -------------------------


def test_without_a_spool_a_batch_out_of_attempts_is_lost_and_reported(
    server: ScriptedServer,
) -> None:
    server.then(Reply(503))
    client, reports = reporting_client(server, retry_max_attempts=1)
    for n in range(3):
        client.track("Lost", {"n": n}, user_id="u")
    assert client.flush(10) is False
    assert [(getattr(e, "reason", None), numbers(evs)) for e, evs in reports] == [
        ("retries_exhausted", [0, 1, 2])
    ]
    stats = client.stats()
    assert (stats.failed, stats.queued, stats.dropped) == (3, 0, {"retries_exhausted": 3})
    assert stats.retries == 0  # one attempt, no retry
    client.shutdown()


def test_with_a_spool_a_refused_batch_is_lost_and_reported(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.then(Reply(400, b'{"status":"error","message":"no"}'))
    client, reports = reporting_client(server, spool_dir=tmp_path / "spool")
    for n in range(3):
        client.track("Refused", {"n": n}, user_id="u")
    assert client.flush(10) is False
    assert [(getattr(e, "reason", None), numbers(evs)) for e, evs in reports] == [
        ("rejected", [0, 1, 2])
    ]
    stats = client.stats()
    assert (stats.failed, stats.queued, stats.dropped) == (3, 0, {"rejected": 3})
    assert len(server.received) == 1  # refused once, not retried from disk
    client.shutdown()


def test_with_a_spool_a_single_event_is_sent_from_disk(
    server: ScriptedServer, tmp_path: Path
) -> None:
    client = KlimeClient("key", server.url, spool_dir=tmp_path / "spool")
    client.track("Alone", {"n": 0}, user_id="u")
    assert client.flush(10) is True
    assert [numbers(r.events()) for r in server.received] == [[0]]
    client.shutdown()


def wait_until_released(spool: Path) -> None:
    """Until no process holds a log in ``spool`` (the sender closes it as it ends)."""
    wait_for(lambda: not any(state.live for state in spool_status(spool)))


def on_disk(spool: Path) -> list[tuple[int, int, int]]:
    """(live logs, pending events, segment files) of each app under ``spool``."""
    return [(state.live, state.pending, state.segments) for state in spool_status(spool)]


def test_with_a_spool_shutdown_leaves_an_unsent_batch_on_disk_unreported(
    server: ScriptedServer, tmp_path: Path
) -> None:
    server.then(*[Reply(503)] * 50)
    spool = tmp_path / "spool"
    client, reports = reporting_client(
        server, spool_dir=spool, retry_initial_delay=50, shutdown_timeout=0.5
    )
    for n in range(3):
        client.track("Kept", {"n": n}, user_id="u")
    assert client.shutdown() is False
    assert reports == [] and client.stats().dropped == {}
    wait_until_released(spool)
    assert [state.pending for state in spool_status(spool)] == [3]


# -- what shutdown gives up at its deadline -------------------------------------------------


def test_shutdown_reports_the_batch_in_flight_apart_from_the_rest(server: ScriptedServer) -> None:
    server.then(Reply(200, ok_body(2), delay=3.0))  # answers after shutdown has returned
    client, reports = reporting_client(
        server, max_batch_size=2, flush_interval=60_000, shutdown_timeout=0.3
    )
    for n in range(2):
        client.track("Slow", {"n": n}, user_id="u")  # a full batch: the sender posts it
    wait_for(lambda: len(server.received) == 1)
    client.track("Queued", {"n": 2}, user_id="u")
    started = time.monotonic()
    assert client.shutdown() is False
    assert time.monotonic() - started < 2.0  # not held by the attempt in flight
    # The batch in flight has a reason of its own: the server may have stored it.
    in_flight = "2 events sent, answer unknown at the shutdown deadline (the server may have them)"
    assert [(str(e), getattr(e, "reason", None), numbers(evs)) for e, evs in reports] == [
        (in_flight, "answer_unknown", [0, 1]),
        ("1 events not sent before the shutdown deadline", "shutdown_timeout", [2]),
    ]
    stats = client.stats()
    dropped = {"answer_unknown": 2, "shutdown_timeout": 1}
    assert (stats.failed, stats.queued, stats.dropped) == (3, 0, dropped)


def test_with_a_spool_the_batch_in_flight_at_shutdown_is_settled_by_the_sender(
    server: ScriptedServer, tmp_path: Path
) -> None:
    # The late answer reaches the sender after shutdown() returned: it acknowledges the
    # batch and only then closes the log (deleted: nothing left for a successor).
    server.then(Reply(200, ok_body(2), delay=1.5))
    spool = tmp_path / "spool"
    client, reports = reporting_client(
        server, spool_dir=spool, max_batch_size=2, flush_interval=60_000, shutdown_timeout=0.3
    )
    for n in range(2):
        client.track("Slow", {"n": n}, user_id="u")
    wait_for(lambda: len(server.received) == 1)
    assert client.shutdown() is False  # not known to be delivered...
    assert reports == [] and client.stats().dropped == {}  # ...but on disk, not lost
    assert [state.live for state in spool_status(spool)] == [1]  # the sender holds it
    wait_until_released(spool)
    assert on_disk(spool) == [(0, 0, 0)]
    assert client.stats().sent == 2


def test_shutdown_without_a_sender_thread_closes_the_spool(
    server: ScriptedServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    client = KlimeClient("key", server.url, sync_mode=True, spool_dir=spool)
    for n in range(3):
        client.track("Synced", {"n": n}, user_id="u")
    assert client.shutdown() is True
    assert on_disk(spool) == [(0, 0, 0)]  # everything sent: the log closed and deleted
    assert numbers(server.all_events()) == [0, 1, 2]


def test_shutdown_does_not_wait_past_its_grace_for_an_on_error_that_blocks(
    server: ScriptedServer,
) -> None:
    # shutdown() waits for the sender's report of a batch it settled, but at most
    # REPORT_GRACE_S (1 s) past its deadline: an on_error that blocks cannot hold it.
    server.then(Reply(400, b'{"status":"error","message":"no"}'))
    in_callback, release = threading.Event(), threading.Event()

    def blocking_on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
        in_callback.set()
        release.wait(10)

    client = KlimeClient(
        "key", server.url, max_batch_size=1, shutdown_timeout=0.2, on_error=blocking_on_error
    )
    try:
        client.track("Refused", user_id="u")  # a full batch: the sender posts it at once
        assert in_callback.wait(10)
        started = time.monotonic()
        client.shutdown()
        assert time.monotonic() - started < 4.0  # 0.2 s + 1 s grace; 10 s if it waited
    finally:
        release.set()


def test_shutdown_without_a_sender_thread_gives_up_at_its_deadline_in_a_backoff(
    server: ScriptedServer,
) -> None:
    # Sync mode: shutdown() sends from the calling thread. After the first 503 the next
    # attempt is 2.5 to 5 s away, past the 0.5 s deadline: shutdown gives up at once.
    server.then(*[Reply(503)] * 5)
    client, reports = reporting_client(
        server, sync_mode=True, retry_initial_delay=5000, shutdown_timeout=0.5
    )
    client.track("Down", {"n": 0}, user_id="u")
    started = time.monotonic()
    assert client.shutdown() is False
    assert time.monotonic() - started < 2.0
    assert [(getattr(e, "reason", None), numbers(evs)) for e, evs in reports] == [
        ("shutdown_timeout", [0])
    ]
    assert len(server.received) == 1


# -- flush without a sender thread ----------------------------------------------------------


def test_flush_without_a_sender_thread_returns_by_its_timeout_and_keeps_the_event(
    server: ScriptedServer,
) -> None:
    # Sync mode: flush() sends from the calling thread. With the server down, its
    # timeout bounds the retries too (an outage must not hold the caller), and the event
    # it could not send stays queued for a later flush or shutdown, not lost.
    server.then(*[Reply(503)] * 20)
    client, reports = reporting_client(server, sync_mode=True, retry_initial_delay=1000)
    client.track("Later", {"n": 0}, user_id="u")
    started = time.monotonic()
    assert client.flush(1) is False
    assert time.monotonic() - started < 2.5
    assert reports == [] and client.stats().dropped == {}
    assert client.queue_size() == 1
    with server.lock:
        server.script.clear()  # the server is back: every answer is a 200 now
    assert client.shutdown() is True
    assert numbers(server.all_events()[-1:]) == [0]


# -- waiting: a flush's whole timeout, a shutdown with nothing left ------------------------


def test_a_short_flush_waits_for_the_sender(server: ScriptedServer) -> None:
    # Under a second is a normal flush timeout (a request's teardown): it must wait for
    # the loopback answer, a few milliseconds away, not give up at once.
    client = KlimeClient("key", server.url, flush_interval=60_000)
    client.track("Quick", {"n": 0}, user_id="u")
    assert client.flush(0.9) is True
    assert numbers(server.all_events()) == [0]
    client.shutdown()


def test_shutdown_after_everything_was_settled_returns_at_once(server: ScriptedServer) -> None:
    # Nothing is being reported: shutdown() has no reason to spend its report grace.
    server.then(Reply(200, ok_body(2)), Reply(400, b'{"status":"error","message":"no"}'))
    client = KlimeClient("key", server.url, max_batch_size=2, flush_interval=60_000)
    for n in range(4):
        client.track("Settled", {"n": n}, user_id="u")
    assert client.flush(10) is False  # one batch taken, one refused: both settled
    started = time.monotonic()
    assert client.shutdown() is True
    assert time.monotonic() - started < 0.8  # 1 s or more if it waited for a report


# -- the caller's side: enqueue, the sender thread, what flush waits for -------------------


def test_an_event_after_shutdown_is_reported_with_its_reason(server: ScriptedServer) -> None:
    client, reports = reporting_client(server)
    client.shutdown()
    client.track("Late", {"n": 9}, user_id="u")
    assert [(str(e), getattr(e, "reason", None), numbers(evs)) for e, evs in reports] == [
        ("an event was tracked after shutdown()", "after_shutdown", [9])
    ]


def senders() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "klime-sender"}


def test_sync_mode_sends_when_a_batch_fills_and_starts_no_thread(server: ScriptedServer) -> None:
    before = senders()
    client = KlimeClient("key", server.url, sync_mode=True, max_batch_size=3)
    for n in range(2):
        client.track("Sync", {"n": n}, user_id="u")
    assert server.received == []  # not a full batch yet
    client.track("Sync", {"n": 2}, user_id="u")  # fills it: sent before track returns
    assert [numbers(r.events()) for r in server.received] == [[0, 1, 2]]
    assert senders() - before == set()
    client.shutdown()


def test_the_sender_is_one_daemon_thread_named_for_klime(server: ScriptedServer) -> None:
    # A daemon, so that it never holds the interpreter open; named, so that it can be
    # told apart in a thread dump.
    before = senders()
    client = KlimeClient("key", server.url)
    for n in range(3):
        client.track("Threaded", {"n": n}, user_id="u")
    [sender] = senders() - before
    assert sender.daemon is True
    assert client.flush(10) is True
    client.shutdown()


def test_after_a_flush_a_full_batch_still_sends_full_batches_only(
    server: ScriptedServer,
) -> None:
    client = KlimeClient("key", server.url, max_batch_size=5, flush_interval=60_000)
    client.track("First", {"n": 0}, user_id="u")
    assert client.flush(10) is True  # a partial batch, because flush() asked for it
    worker = client._worker.get()
    with worker._send_lock:  # all 7 queue up before the sender looks
        for n in range(1, 8):
            client.track("A", {"n": n}, user_id="u")
    wait_for(lambda: len(server.received) == 2)
    with worker._send_lock:  # the sender has finished that drain
        assert [len(r.events()) for r in server.received] == [1, 5]
    assert client.queue_size() == 2  # the remainder waits for the next batch or interval
    client.shutdown()


def test_the_sender_keeps_running_after_the_queue_empties(server: ScriptedServer) -> None:
    client = KlimeClient("key", server.url, flush_interval=100)
    client.track("One", {"n": 0}, user_id="u")
    wait_for(lambda: len(server.received) == 1)  # sent when the interval fell due
    client.track("Two", {"n": 1}, user_id="u")
    wait_for(lambda: len(server.received) == 2)  # and again, by the same sender
    assert [numbers(r.events()) for r in server.received] == [[0], [1]]
    client.shutdown()


def test_flush_waits_only_for_the_events_tracked_before_it(server: ScriptedServer) -> None:
    # "A" is in flight when flush() starts waiting; "B", tracked during the wait, is
    # answered seconds later. flush() returns once A is delivered, not waiting for B.
    server.then(Reply(200, ok_body(1), delay=0.5), Reply(200, ok_body(1), delay=5.0))
    client = KlimeClient("key", server.url, flush_interval=60_000, shutdown_timeout=0.2)
    client.track("A", {"n": 0}, user_id="u")
    results: list[bool] = []
    flusher = threading.Thread(target=lambda: results.append(client.flush(3)))
    flusher.start()
    wait_for(lambda: len(server.received) == 1)  # A is posted: the flush has begun
    client.track("B", {"n": 1}, user_id="u")
    flusher.join(10)
    assert results == [True]
    assert client.stats().sent == 1  # A, delivered before flush() returned
    client.shutdown()  # B is still in flight: given up and reported at the deadline


def test_a_full_queue_is_reported_during_a_long_backoff(server: ScriptedServer) -> None:
    # The sender waits out a 30 s Retry-After inside the delivery; it still reports the
    # events a full queue dropped meanwhile (its housekeeping), not 30 s later.
    server.then(Reply(503, headers=(("Retry-After", "30"),)))
    dropped = threading.Event()
    reports: list[tuple[str, int]] = []

    def on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
        reports.append((getattr(error, "reason", "?"), len(events)))
        if getattr(error, "reason", None) == "queue_full":
            dropped.set()

    client = KlimeClient(
        "key",
        server.url,
        max_batch_size=2,
        max_queue_size=2,
        flush_interval=60_000,
        shutdown_timeout=0.2,
        on_error=on_error,
    )
    for n in range(2):
        client.track("Paused", {"n": n}, user_id="u")  # a full batch: posted, then 503
    wait_for(lambda: len(server.received) == 1)
    for n in range(2, 7):
        client.track("Waiting", {"n": n}, user_id="u")  # 2 fit in the queue, 3 do not
    assert dropped.wait(10)
    assert reports == [("queue_full", 3)]
    client.shutdown()
