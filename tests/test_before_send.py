"""before_send: the app filters, redacts or samples each event before it leaves the
process. Dropped events are counted, not reported as losses; a hook that fails drops
its event (failing closed) and is counted, logged and reported."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import klime_mp
from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.errors import BeforeSendError, SendError
from tests.conftest import WRITE_KEY, CollectorProcess

Event = dict[str, Any]
Reported = list[tuple[BaseException, list[Event]]]


def redact_email(event: Event) -> Event:
    event.get("properties", {}).pop("email", None)
    event.get("traits", {}).pop("email", None)
    return event


def test_the_hook_sees_the_event_exactly_as_it_will_be_sent(collector: Collector) -> None:
    seen: list[Event] = []

    def keep(event: Event) -> Event:
        seen.append(json.loads(json.dumps(event)))  # a copy, as it was when the hook ran
        return event

    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=dt.timezone.utc)
    with KlimeClient(WRITE_KEY, endpoint=collector.url, before_send=keep) as client:
        client.track("Paid", {"at": when, "tags": ("a", "b")}, user_id="u", message_id="m1")
        client.identify("u", {"plan": "pro"})
        client.group("g", {"name": "Acme"}, user_id="u")
    stored = collector.events()
    assert seen == stored  # the dict the hook got is what the server stored
    assert seen[0]["properties"] == {"at": "2026-01-02T03:04:05.006Z", "tags": ["a", "b"]}
    assert seen[0]["messageId"] == "m1" and seen[0]["userId"] == "u"
    assert seen[0]["context"]["library"]["name"] == "klime_mp"
    assert [e["type"] for e in seen] == ["track", "identify", "group"]


def test_a_redacting_hook_keeps_the_data_out_of_what_is_sent(collector: Collector) -> None:
    properties = {"email": "jane@acme.com", "plan": "pro"}
    with KlimeClient(WRITE_KEY, endpoint=collector.url, before_send=redact_email) as client:
        client.track("Signed Up", properties, user_id="u")
        client.identify("u", {"email": "jane@acme.com", "name": "Jane"})
    stored = collector.events()
    assert stored[0]["properties"] == {"plan": "pro"}
    assert stored[1]["traits"] == {"name": "Jane"}
    assert "jane@acme.com" not in json.dumps(stored)
    assert properties == {"email": "jane@acme.com", "plan": "pro"}  # the caller's dict


def test_none_drops_the_event_counts_it_and_reports_no_loss(collector: Collector) -> None:
    reported: Reported = []

    def no_test_users(event: Event) -> Event | None:
        return None if event.get("userId", "").startswith("test-") else event

    client = KlimeClient(
        WRITE_KEY,
        endpoint=collector.url,
        before_send=no_test_users,
        on_error=lambda error, evs: reported.append((error, evs)),
    )
    client.track("A", user_id="test-1")
    client.track("B", user_id="real-1")
    client.identify("test-2")
    assert client.flush(10) is True  # a filtered event is not a loss
    assert client.stats().dropped == {"before_send": 2}
    assert client.stats().enqueued == 1 and client.stats().sent == 1
    assert client.shutdown() is True
    assert [e["event"] for e in collector.events()] == ["B"]
    assert reported == []


def test_a_hook_that_raises_drops_counts_logs_and_reports_the_event(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    reported: Reported = []

    def broken(event: Event) -> Event:
        if event["event"] == "Bad":
            raise KeyError("no such key")
        return event

    client = KlimeClient(
        WRITE_KEY,
        endpoint=collector.url,
        before_send=broken,
        on_error=lambda error, evs: reported.append((error, evs)),
    )
    with caplog.at_level(logging.ERROR, logger="klime"):
        client.track("Bad", {"email": "jane@acme.com"}, user_id="u")  # does not raise
    client.track("Good", user_id="u")
    assert client.flush(10) is False  # a loss since the last flush
    assert client.stats().dropped == {"before_send_error": 1}
    assert client.shutdown() is True
    assert [e["event"] for e in collector.events()] == ["Good"]  # failing closed
    ((error, events),) = reported
    assert isinstance(error, BeforeSendError) and isinstance(error.__cause__, KeyError)
    assert "before_send raised KeyError" in str(error)
    assert [e["event"] for e in events] == ["Bad"]
    assert "before_send raised KeyError" in caplog.text and "jane@acme.com" not in caplog.text


@pytest.mark.parametrize(
    ("hook", "words"),
    [
        (lambda event: [event], "must return a dict or None, got list"),
        (lambda event: {**event, "messageId": ""}, "messageId before_send returned"),
        (lambda event: {**event, "properties": {"x": object()}}, "cannot be sent"),
    ],
)
def test_a_hook_that_returns_what_cannot_be_sent_drops_the_event(hook: Any, words: str) -> None:
    reported: Reported = []
    client = KlimeClient(
        "key", send=False, before_send=hook, on_error=lambda e, evs: reported.append((e, evs))
    )
    client.track("A", user_id="u")
    assert client.stats().dropped == {"before_send_error": 1}
    assert client.stats().enqueued == 0
    ((error, _),) = reported
    assert isinstance(error, BeforeSendError) and words in str(error)


def test_the_hook_runs_once_per_event_in_order() -> None:
    names: list[str] = []

    def record(event: Event) -> Event:
        names.append(event.get("event", event["type"]))
        return event

    client = KlimeClient("key", send=False, before_send=record)
    client.track("A", user_id="u")
    client.identify("u")
    client.group("g")
    client.track("B", group_id="g")
    assert names == ["A", "identify", "group", "B"]
    assert client.stats().enqueued == 4


def test_bad_input_is_still_refused_at_the_call_site_before_the_hook() -> None:
    called: list[Event] = []
    client = KlimeClient("key", send=False, before_send=lambda e: called.append(e) or e)
    with pytest.raises(ValueError, match="needs user_id or group_id"):
        client.track("A")
    assert called == []


def test_sync_calls_go_through_the_hook(collector: Collector) -> None:
    def hook(event: Event) -> Event | None:
        if event.get("event") == "Drop":
            return None
        if event.get("event") == "Raise":
            raise RuntimeError("boom")
        return redact_email(event)

    with KlimeClient(WRITE_KEY, endpoint=collector.url, before_send=hook) as client:
        assert client.track_sync("Keep", {"email": "x@y.z", "n": 1}, user_id="u").accepted == 1
        dropped = client.track_sync("Drop", user_id="u")
        assert (dropped.status, dropped.accepted) == ("dropped", 0)
        with pytest.raises(SendError, match="before_send raised RuntimeError") as raised:
            client.track_sync("Raise", user_id="u")
        assert isinstance(raised.value.__cause__, BeforeSendError)
        assert [e["event"] for e in raised.value.events] == ["Raise"]
        client.identify_sync("u", {"email": "x@y.z"})
        client.group_sync("g", {"email": "x@y.z"})
        assert client.stats().dropped == {"before_send": 1, "before_send_error": 1}
    stored = collector.events()
    assert [e.get("event", e["type"]) for e in stored] == ["Keep", "identify", "group"]
    assert "x@y.z" not in json.dumps(stored)


def test_configure_takes_before_send(collector: Collector) -> None:
    klime_mp.configure(WRITE_KEY, endpoint=collector.url, before_send=redact_email)
    try:
        klime_mp.track("Signed Up", {"email": "x@y.z", "plan": "pro"}, user_id="u")
    finally:
        klime_mp.shutdown()
    assert [e["properties"] for e in collector.events()] == [{"plan": "pro"}]


def test_a_client_without_a_hook_keeps_the_plain_queue_path() -> None:
    # The fast path has no check for the hook: only a hooked client gets another _enqueue.
    assert "_enqueue" not in vars(KlimeClient("key", send=False))
    assert "_enqueue" in vars(KlimeClient("key", send=False, before_send=lambda e: e))


def test_before_send_must_be_callable() -> None:
    with pytest.raises(TypeError, match="before_send must be callable, got str"):
        KlimeClient("key", before_send="redact")  # type: ignore[arg-type]


# -- klime-mp import --before-send ------------------------------------------------------

HOOK_MODULE = """
def screen(event):
    if event.get("userId") == "usr_skip":
        return None
    if event.get("userId") == "usr_fail":
        raise ValueError("cannot screen this one")
    event["properties"].pop("email", None)
    return event
"""


def import_file(tmp_path: Path, collector_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "screening.py").write_text(HOOK_MODULE)
    lines = [
        {"type": "track", "event": "A", "user_id": user, "properties": {"email": "a@b.c", "n": n}}
        for n, user in enumerate(["usr_1", "usr_skip", "usr_fail", "usr_2"])
    ]
    data = tmp_path / "events.jsonl"
    stamp = "2025-03-01T12:00:00Z"
    data.write_text("".join(json.dumps({**line, "timestamp": stamp}) + "\n" for line in lines))
    env = {"KLIME_WRITE_KEY": WRITE_KEY, "PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1"}
    command = [sys.executable, "-m", "klime_mp", "import", str(data)]
    return subprocess.run(
        [*command, "--endpoint", collector_url, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_passes_every_line_through_before_send(tmp_path: Path) -> None:
    collector = CollectorProcess(tmp_path / "events.sqlite3")
    try:
        result = import_file(tmp_path, collector.url, "--before-send", "screening:screen")
        stored = collector.events()
    finally:
        collector.stop()
    assert result.returncode == 1, result.stderr  # the line whose hook failed is a bad line
    assert "events.jsonl:3: before_send raised ValueError: cannot screen this one" in (
        result.stderr
    )
    assert re.search(r"^skipped by hook: +1$", result.stdout, re.M), result.stdout
    assert [(e["userId"], e["properties"]) for e in stored] == [
        ("usr_1", {"n": 0}),
        ("usr_2", {"n": 3}),
    ]


def test_import_refuses_a_before_send_it_cannot_load(tmp_path: Path) -> None:
    for spec, words in [
        ("screening", "expected MODULE:FUNCTION"),
        ("screening:missing", "has no attribute 'missing'"),
        ("no_such_module:f", "No module named 'no_such_module'"),
    ]:
        result = import_file(tmp_path, "http://127.0.0.1:9", "--before-send", spec)
        assert result.returncode == 2 and words in result.stderr, result.stderr
