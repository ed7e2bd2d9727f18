"""message_id=: an id the caller chooses (an outbox row, a retried job) is the event's
messageId, so the server keeps the event once however often it is sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

import klime_mp
from klime_mp import KlimeClient, events
from klime_mp.collector import Collector
from klime_mp.importer.lines import LineError, to_event
from klime_mp.values import MAX_MESSAGE_ID_LENGTH


def test_queued_calls_send_the_callers_message_id(collector: Collector) -> None:
    with KlimeClient("key", endpoint=collector.url) as client:
        client.track("Paid", {"n": 1}, user_id="u", message_id="order-7:paid")
        client.identify("u", {"plan": "pro"}, message_id="user-u:v2")
        client.group("g", None, user_id="u", message_id="link-u-g")
    assert collector.message_ids() == ["order-7:paid", "user-u:v2", "link-u-g"]


def test_the_same_message_id_twice_is_stored_once(collector: Collector) -> None:
    # The outbox case: a job retried after a crash sends its event again.
    with KlimeClient("key", endpoint=collector.url) as client:
        client.track("Paid", {"n": 1}, user_id="u", message_id="order-7:paid")
        client.track("Paid", {"n": 1}, user_id="u", message_id="order-7:paid")
    assert collector.message_ids() == ["order-7:paid"]


def test_sync_calls_send_the_callers_message_id(collector: Collector) -> None:
    with KlimeClient("key", endpoint=collector.url) as client:
        client.track_sync("Paid", user_id="u", message_id="t-1")
        client.identify_sync("u", message_id="i-1")
        client.group_sync("g", message_id="g-1")
    assert collector.message_ids() == ["t-1", "i-1", "g-1"]


def test_module_level_calls_pass_the_message_id(collector: Collector) -> None:
    klime_mp.configure("key", endpoint=collector.url)
    try:
        klime_mp.track("Paid", user_id="u", message_id="m-track")
        klime_mp.identify("u", message_id="m-identify")
        klime_mp.group("g", message_id="m-group")
    finally:
        klime_mp.shutdown()
    assert collector.message_ids() == ["m-track", "m-identify", "m-group"]


def test_an_omitted_message_id_is_a_fresh_uuid_each_time() -> None:
    first = json.loads(events.encode_track("A", None, "u", None))["messageId"]
    second = json.loads(events.encode_track("A", None, "u", None))["messageId"]
    assert first != second and len(first) == 36 and first[14] == "4"


@pytest.mark.parametrize(
    "build",
    [
        lambda mid: events.encode_track("A", None, "u", None, None, mid),
        lambda mid: events.serialize(events.build_track("A", None, "u", None, None, mid)),
        lambda mid: events.encode_identify("u", None, None, mid),
        lambda mid: events.encode_group("g", None, "u", None, mid),
    ],
)
def test_an_id_that_needs_escaping_is_sent_as_given(build: Any) -> None:
    odd = 'a "quoted"\\ id\n with ünïcode'
    assert json.loads(build(odd))["messageId"] == odd


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        ("", ValueError, "message_id must be a non-empty string"),
        ("   ", ValueError, "message_id must be a non-empty string"),
        ("x" * (MAX_MESSAGE_ID_LENGTH + 1), ValueError, "at most 100 characters, got 101"),
        (123, TypeError, "message_id must be a string, got int"),
        (b"abc", TypeError, "message_id must be a string, got bytes"),
        ("bad \udc80", ValueError, "message_id contains a lone surrogate"),
    ],
)
def test_a_bad_message_id_is_refused_by_every_call(value: Any, error: type, words: str) -> None:
    client = KlimeClient("key", send=False)
    calls = [
        lambda: client.track("A", user_id="u", message_id=value),
        lambda: client.identify("u", message_id=value),
        lambda: client.group("g", message_id=value),
        lambda: client.track_sync("A", user_id="u", message_id=value),
        lambda: client.identify_sync("u", message_id=value),
        lambda: client.group_sync("g", message_id=value),
    ]
    for call in calls:
        with pytest.raises(error, match=words):
            call()
    assert client.stats().enqueued == 0


def test_the_longest_id_allowed_is_sent() -> None:
    longest = "x" * MAX_MESSAGE_ID_LENGTH
    assert json.loads(events.encode_track("A", None, "u", None, None, longest))["messageId"] == (
        longest
    )


def test_the_importer_refuses_the_ids_the_client_refuses() -> None:
    line = {"type": "track", "event": "A", "user_id": "u", "timestamp": "2026-01-01T00:00:00Z"}
    assert to_event({**line, "message_id": "x" * MAX_MESSAGE_ID_LENGTH}).message_id
    with pytest.raises(LineError, match="at most 100 characters"):
        to_event({**line, "message_id": "x" * (MAX_MESSAGE_ID_LENGTH + 1)})
    with pytest.raises(LineError, match="must be a string, got int"):
        to_event({**line, "message_id": 5})
