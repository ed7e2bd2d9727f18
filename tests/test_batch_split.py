"""A batch the server refuses for its data (400, 413) is sent again in halves: the good
events are delivered, only an event refused alone is lost, with the server's message;
message ids never change; with a spool, nothing is resent and nothing left on disk.

A real collector on loopback, told to answer 413 above a body size or 400 to a batch
holding a marked event (``FaultPlan.max_body_bytes``, ``poison_event``); a scripted
server where the exact order of answers matters (an outage in the middle of a split).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.collector.faults import FaultPlan
from klime_mp.errors import DeliveryError, SendError
from klime_mp.spool.log import status as spool_status
from tests.scripted_server import Reply, ScriptedServer

KEY = "split-key"
POISON = "Poison"
Reported = list[tuple[BaseException, list[dict[str, Any]]]]


def client_for(url: str, reported: Reported, **options: Any) -> KlimeClient:
    """A client that sends only when asked (or when 100 events wait), recording every
    on_error call."""
    options.setdefault("max_batch_size", 100)
    options.setdefault("flush_interval", 60_000)
    options.setdefault("retry_initial_delay", 20)
    return KlimeClient(
        KEY, url, on_error=lambda error, events: reported.append((error, events)), **options
    )


def track_with_poison(client: KlimeClient, count: int, poison_at: int) -> None:
    for n in range(count):
        client.track(POISON if n == poison_at else "Good", {"n": n}, user_id="u")


def stored_ns(collector: Collector) -> list[int]:
    return sorted(event["properties"]["n"] for event in collector.events())


def test_a_400_batch_is_split_to_deliver_the_good_events_and_lose_only_the_bad_one(
    collector: Collector,
) -> None:
    collector.faults = FaultPlan(poison_event=POISON)
    reported: Reported = []
    client = client_for(collector.url, reported)
    track_with_poison(client, 100, poison_at=37)
    assert client.flush(20) is False  # one event lost
    assert stored_ns(collector) == [n for n in range(100) if n != 37]
    [(error, events)] = reported
    assert [event["properties"]["n"] for event in events] == [37]
    assert isinstance(error, DeliveryError) and (error.reason, error.status) == ("rejected", 400)
    assert "the batch holds a bad event ('Poison')" in str(error)  # the server's words
    assert "refused alone, out of a batch of 100" in str(error)
    assert client.stats().dropped == {"rejected": 1} and client.stats().sent == 99
    # 100 -> 50 (0-49) refused -> 25 ok, 25 (25-49) refused -> 12 ok, 13 (37-49) refused
    # -> 6 (37-42) refused -> 3 (37-39) refused -> 1 (37) refused alone, 2 ok; then the
    # 3, 7 and 50 left ok: 13 requests, 12 of them for the split (6 halvings).
    stats = collector.stats()
    assert stats.requests == 13
    assert stats.duplicates == 0 and stats.received == 99  # nothing sent twice
    client.shutdown()


def test_a_413_batch_is_split_and_only_the_event_too_large_alone_is_lost(
    collector: Collector,
) -> None:
    collector.faults = FaultPlan(max_body_bytes=4000)
    reported: Reported = []
    client = client_for(collector.url, reported)
    for n in range(10):
        padding = "x" * (6000 if n == 6 else 10)
        client.track("Sized", {"n": n, "padding": padding}, user_id="u")
    assert client.flush(20) is False
    assert stored_ns(collector) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    [(error, events)] = reported
    assert [event["properties"]["n"] for event in events] == [6]
    assert isinstance(error, DeliveryError) and (error.reason, error.status) == ("rejected", 413)
    assert "at most 4000" in str(error)
    # 10 refused -> 5 ok, 5 (5-9) refused -> 2 (5-6) refused -> 1 ok, 1 (6) refused
    # alone; then 3 (7-9) ok.
    assert collector.stats().requests == 7
    assert client.stats().dropped == {"rejected": 1}
    client.shutdown()


def test_a_body_too_large_for_the_server_arrives_in_parts_and_nothing_is_lost(
    collector: Collector,
) -> None:
    collector.faults = FaultPlan(max_body_bytes=4500)  # takes 4 of these events at most
    reported: Reported = []
    client = client_for(collector.url, reported)
    for n in range(16):
        client.track("Sized", {"n": n, "padding": "x" * 900}, user_id="u")
    assert client.flush(20) is True
    assert stored_ns(collector) == list(range(16)) and reported == []
    assert collector.stats().requests == 1 + 2 + 4 + 8  # halved down to parts of 4
    assert collector.stats().duplicates == 0
    client.shutdown()


def test_a_server_that_refuses_every_body_costs_at_most_41_requests_a_batch(
    collector: Collector,
) -> None:
    collector.faults = FaultPlan(max_body_bytes=10)  # a proxy that takes nothing
    reported: Reported = []
    client = client_for(collector.url, reported)
    for n in range(100):
        client.track("Good", {"n": n}, user_id="u")
    assert client.flush(20) is False
    # The batch, then 40 more (20 halvings) instead of 198 to refuse 100 events one by one.
    assert collector.stats().requests == 41
    assert client.stats().dropped == {"rejected": 100}
    assert sum(len(events) for _error, events in reported) == 100
    client.shutdown()


def test_with_a_spool_a_split_batch_leaves_nothing_on_disk_and_nothing_is_resent(
    tmp_path: Path, collector: Collector
) -> None:
    spool = tmp_path / "spool"
    collector.faults = FaultPlan(poison_event=POISON)
    reported: Reported = []
    client = client_for(collector.url, reported, spool_dir=spool)
    track_with_poison(client, 100, poison_at=70)
    assert client.flush(20) is False
    assert client.stats().queued == 0  # every record acknowledged: delivered or refused
    client.shutdown()
    successor = client_for(collector.url, reported, spool_dir=spool)
    successor.shutdown()  # would send whatever the first left on disk
    assert [state.pending for state in spool_status(spool)] in ([], [0])
    assert stored_ns(collector) == [n for n in range(100) if n != 70]
    assert [[event["event"] for event in events] for _error, events in reported] == [[POISON]]
    stats = collector.stats()
    assert stats.duplicates == 0 and stats.received == 99


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def ids(server: ScriptedServer, first: int = 0) -> list[list[str]]:
    return [[event["messageId"] for event in r.events()] for r in server.received[first:]]


def test_an_outage_in_the_middle_of_a_split_keeps_only_the_unsent_half_on_disk(
    tmp_path: Path, server: ScriptedServer
) -> None:
    spool = tmp_path / "spool"
    server.then(Reply(400, b'{"error":"bad event"}'), Reply(200))
    server.then(*[Reply(503)] * 1000)  # then down until the first client gives up
    reported: Reported = []
    client = client_for(server.url, reported, spool_dir=spool, shutdown_timeout=1)
    for n in range(4):
        client.track("Good", {"n": n}, user_id="u")
    assert client.flush(0.5) is False
    assert client.stats().queued == 2  # the first half delivered, the second waits on disk
    client.shutdown()
    assert reported == [] and client.stats().dropped == {}
    [whole, first_half, *probes] = ids(server)
    assert first_half == whole[:2] and all(probe == whole[2:] for probe in probes)
    with server.lock:
        server.script.clear()  # back up: every batch taken
    seen = len(server.received)
    deadline = time.monotonic() + 20
    while any(state.live for state in spool_status(spool)):  # the log let go of
        assert time.monotonic() < deadline
        time.sleep(0.05)
    successor = client_for(server.url, reported, spool_dir=spool)
    successor.shutdown()
    assert ids(server, seen) == [whole[2:]]  # only the kept half, with its ids
    assert reported == [] and [state.pending for state in spool_status(spool)] == [0]


def test_a_dead_process_batch_is_split_too_when_recovered(
    tmp_path: Path, collector: Collector
) -> None:
    spool = tmp_path / "spool"
    collector.faults = FaultPlan(error_rate=1.0, status=503)  # down: the events stay
    reported: Reported = []
    first = client_for(collector.url, reported, spool_dir=spool, shutdown_timeout=0.5)
    track_with_poison(first, 10, poison_at=3)
    first.shutdown()
    assert reported == []
    collector.faults = FaultPlan(poison_event=POISON)
    deadline = time.monotonic() + 20
    while any(state.live for state in spool_status(spool)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    successor = client_for(collector.url, reported, spool_dir=spool)
    successor.shutdown()
    assert stored_ns(collector) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    [(error, events)] = reported
    assert [event["properties"]["n"] for event in events] == [3]
    assert "the batch holds a bad event" in str(error)
    assert successor.stats().dropped == {"rejected": 1}
    assert collector.stats().duplicates == 0


def test_a_sync_call_sends_its_one_event_once_and_raises_the_servers_answer(
    collector: Collector,
) -> None:
    collector.faults = FaultPlan(poison_event=POISON)
    client = KlimeClient(KEY, collector.url)
    with pytest.raises(SendError, match="the batch holds a bad event") as raised:
        client.track_sync(POISON, user_id="u")
    assert [event["event"] for event in raised.value.events] == [POISON]
    assert collector.stats().requests == 1
    client.shutdown()


@pytest.mark.parametrize(
    ("field", "value"), [("max_body_bytes", 0), ("max_body_bytes", "9"), ("poison_event", "")]
)
def test_the_data_faults_are_checked(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        FaultPlan(**{field: value})


def test_the_data_faults_leave_other_batches_alone(collector: Collector) -> None:
    collector.faults = FaultPlan(poison_event=POISON, max_body_bytes=2000)
    client = KlimeClient(KEY, collector.url, max_batch_size=5)
    for n in range(5):
        client.track("Good", {"n": n}, user_id="u")
    assert client.flush(10) is True
    assert stored_ns(collector) == [0, 1, 2, 3, 4] and collector.stats().requests == 1
    assert json.dumps(collector.stats().faults_injected) == "{}"
    client.shutdown()
