"""An explicit ``timestamp=`` on every call: checked, and sent as UTC with ms and Z."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest

import klime_mp
from klime_mp import KlimeClient
from tests.scripted_server import ScriptedServer

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
# 2024-03-01 12:00:00.123456 in India is 06:30:00.123 UTC (microseconds truncated to ms).
AWARE = dt.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=IST)
AWARE_WIRE = "2024-03-01T06:30:00.123Z"
CALL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


@pytest.fixture
def client(server: ScriptedServer) -> Iterator[KlimeClient]:
    running = KlimeClient("key", endpoint=server.url, flush_interval=60_000)
    yield running
    running.shutdown()


def sent(client: KlimeClient, server: ScriptedServer) -> list[dict[str, Any]]:
    assert client.flush(10)
    return server.all_events()


def test_aware_datetime_in_another_zone_is_sent_as_utc_with_ms_and_z(
    client: KlimeClient, server: ScriptedServer
) -> None:
    client.track("Report Generated", user_id="u1", timestamp=AWARE)
    client.identify("u1", {"plan": "pro"}, timestamp=AWARE)
    client.group("org_1", user_id="u1", timestamp=AWARE)
    assert [e["timestamp"] for e in sent(client, server)] == [AWARE_WIRE] * 3


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("2024-03-01T12:00:00.123+05:30", "2024-03-01T06:30:00.123Z"),
        ("2024-03-01T06:30:00Z", "2024-03-01T06:30:00.000Z"),
        ("2024-03-01T01:30:00.5-0500", "2024-03-01T06:30:00.500Z"),
        ("2024-03-01 06:30:00.123456789z", "2024-03-01T06:30:00.123Z"),
        ("0999-12-31T23:59:59.999Z", "0999-12-31T23:59:59.999Z"),
    ],
)
def test_iso_string_with_an_offset_is_sent_as_utc(
    client: KlimeClient, server: ScriptedServer, text: str, wire: str
) -> None:
    client.track("A", user_id="u1", timestamp=text)
    assert sent(client, server)[0]["timestamp"] == wire


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (dt.datetime(2024, 3, 1, 12, 0), ValueError, "timestamp is a naive datetime"),
        ("2024-03-01T12:00:00", ValueError, "timestamp '2024-03-01T12:00:00' is not an ISO"),
        ("yesterday", ValueError, "timestamp 'yesterday' is not an ISO"),
        ("2024-02-30T00:00:00Z", ValueError, "timestamp '2024-02-30T00:00:00Z' is not a valid"),
        ("2024-03-01T00:00:00+24:00", ValueError, "is not a valid"),
        (1709274600, TypeError, "timestamp must be a timezone-aware datetime"),
        (dt.date(2024, 3, 1), TypeError, "timestamp must be a timezone-aware datetime"),
    ],
)
def test_bad_timestamps_raise_naming_the_argument(
    client: KlimeClient, value: Any, error: type[Exception], words: str
) -> None:
    for call in (
        lambda: client.track("A", user_id="u1", timestamp=value),
        lambda: client.identify("u1", timestamp=value),
        lambda: client.group("org_1", timestamp=value),
        lambda: client.track_sync("A", user_id="u1", timestamp=value),
    ):
        with pytest.raises(error, match=re.escape(words)):
            call()
    assert client.queue_size() == 0


def test_a_time_more_than_five_minutes_ahead_is_refused_a_little_ahead_is_not(
    client: KlimeClient, server: ScriptedServer
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(ValueError, match=r"timestamp .* more than 5 minutes in the future"):
        client.track("A", user_id="u1", timestamp=now + dt.timedelta(minutes=6))
    with pytest.raises(ValueError, match="in the future"):
        client.identify("u1", timestamp=(now + dt.timedelta(hours=3)).isoformat())
    client.track("A", user_id="u1", timestamp=now + dt.timedelta(minutes=4))  # clock skew
    assert len(sent(client, server)) == 1


def test_sync_variants_take_a_timestamp(client: KlimeClient, server: ScriptedServer) -> None:
    client.track_sync("A", user_id="u1", timestamp=AWARE)
    client.identify_sync("u1", timestamp="2024-03-01T12:00:00.123+05:30")
    client.group_sync("org_1", {"n": 1}, user_id="u1", timestamp=AWARE)
    assert [e["timestamp"] for e in server.all_events()] == [AWARE_WIRE] * 3


@pytest.fixture
def default_client() -> Iterator[None]:
    yield
    klime_mp.shutdown()
    klime_mp.default._default = None


def test_module_level_calls_take_a_timestamp(server: ScriptedServer, default_client: None) -> None:
    klime_mp.configure("key", endpoint=server.url, flush_interval=60_000)
    klime_mp.track("A", user_id="u1", timestamp=AWARE)
    klime_mp.identify("u1", timestamp=AWARE)
    klime_mp.group("org_1", timestamp=AWARE)
    with pytest.raises(ValueError, match="timestamp is a naive datetime"):
        klime_mp.track("A", user_id="u1", timestamp=dt.datetime(2024, 1, 1))
    assert klime_mp.flush(10)
    assert [e["timestamp"] for e in server.all_events()] == [AWARE_WIRE] * 3


def test_timestamp_is_keyword_only(client: KlimeClient) -> None:
    with pytest.raises(TypeError):
        client.track("A", None, "u1", None, AWARE)  # type: ignore[misc]  # the point
    with pytest.raises(TypeError):
        client.identify("u1", None, AWARE)  # type: ignore[misc]  # the point


def test_without_a_timestamp_the_call_time_is_sent_in_the_same_document(
    client: KlimeClient, server: ScriptedServer
) -> None:
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    client.track("A", {"n": 1}, user_id="u1", group_id="o1")
    client.track("A", {"n": 1}, user_id="u1", group_id="o1", timestamp=AWARE)
    plain, stamped = sent(client, server)
    assert CALL_TIME.fullmatch(plain["timestamp"])
    moment = dt.datetime.strptime(plain["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert moment.replace(tzinfo=dt.timezone.utc) >= before
    # The same keys, in the same order: only the time differs.
    assert list(plain) == list(stamped)
    assert {**plain, "messageId": "", "timestamp": ""} == {
        **stamped,
        "messageId": "",
        "timestamp": "",
    }
