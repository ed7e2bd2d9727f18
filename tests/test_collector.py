"""The local collector against real loopback connections, as clients will meet it."""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import errno
import http.client
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from klime_mp.collector import Collector, CollectorStats, FaultPlan
from klime_mp.collector.validation import is_timestamp

pytestmark = pytest.mark.timeout(60)

KEY = "test-key"
TIMEOUT = 5.0
# The API's limits, written here: a test that read them from the collector would pass
# whatever the collector said.
EVENT_LIMIT_BYTES = 200 * 1024
BODY_LIMIT_BYTES = 10 * 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]

Response = tuple[int, http.client.HTTPMessage, bytes]
MakeCollector = Callable[..., Collector]


def track(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "messageId": str(uuid.uuid4()),
        "timestamp": "2026-11-22T10:00:00.123Z",
        "event": "Report Generated",
        "userId": "usr_1",
        "properties": {"report_type": "revenue"},
    }
    event.update(fields)
    return event


def identify(**fields: Any) -> dict[str, Any]:
    event = track(type="identify", traits={"email": "jane@acme.com"}, **fields)
    del event["event"], event["properties"]
    return event


def group(**fields: Any) -> dict[str, Any]:
    event = track(type="group", groupId="org_1", traits={"name": "Acme"}, **fields)
    del event["event"], event["properties"]
    return event


def batch_body(*events: Any) -> bytes:
    return json.dumps({"batch": list(events)}).encode()


def connect(collector: Collector) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", collector.port, timeout=TIMEOUT)


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    conn.request(method, path, body, headers or {})
    response = conn.getresponse()
    return response.status, response.headers, response.read()


def post(collector: Collector, body: bytes, key: str | None = KEY) -> Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn = connect(collector)
    try:
        return request(conn, "POST", "/v1/batch", body, headers)
    finally:
        conn.close()


def post_json(collector: Collector, body: bytes, key: str | None = KEY) -> tuple[int, Any]:
    status, _headers, raw = post(collector, body, key)
    return status, json.loads(raw)


def raw_exchange(collector: Collector, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", collector.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def make_collector(tmp_path: Path) -> Iterator[MakeCollector]:
    started: list[Collector] = []

    def make(**options: Any) -> Collector:
        options.setdefault("db", tmp_path / f"collector-{len(started)}.sqlite3")
        collector = Collector(**options).start()
        started.append(collector)
        return collector

    yield make
    for collector in started:
        collector.stop()


@pytest.fixture
def collector(make_collector: MakeCollector) -> Collector:
    return make_collector()


# --- accepting events ------------------------------------------------------------------


def test_valid_batch_is_stored_and_counted(collector: Collector) -> None:
    events = [track(), identify(), group(), track(userId=None, groupId="org_2")]
    del events[3]["userId"]

    status, reply = post_json(collector, batch_body(*events))

    assert status == 200
    assert reply == {"status": "ok", "accepted": 4, "failed": 0}
    assert collector.events() == events
    assert collector.message_ids() == [event["messageId"] for event in events]
    assert collector.stats() == CollectorStats(
        requests=1,
        connections=1,
        received=4,
        stored=4,
        duplicates=0,
        rejected=0,
        unacknowledged=0,
        status_counts={"200": 1},
        faults_injected={},
    )


def _without(key: str) -> Callable[[dict[str, Any]], Any]:
    def mutate(event: dict[str, Any]) -> Any:
        del event[key]
        return event

    return mutate


def _with(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    def mutate(event: dict[str, Any]) -> Any:
        event.update(fields)
        return event

    return mutate


INVALID_EVENTS = [
    ("not_an_object", lambda event: ["a", "list"], "invalid_event"),
    ("unknown_type", _with(type="page"), "invalid_type"),
    ("no_type", _without("type"), "invalid_type"),
    ("no_message_id", _without("messageId"), "missing_message_id"),
    ("empty_message_id", _with(messageId=""), "missing_message_id"),
    ("numeric_message_id", _with(messageId=42), "missing_message_id"),
    ("no_timestamp", _without("timestamp"), "invalid_timestamp"),
    ("unparseable_timestamp", _with(timestamp="yesterday"), "invalid_timestamp"),
    ("impossible_date", _with(timestamp="2026-02-30T10:00:00Z"), "invalid_timestamp"),
    ("numeric_timestamp", _with(timestamp=1763805600), "invalid_timestamp"),
    ("track_without_event", _without("event"), "missing_event"),
    ("track_with_empty_event", _with(event=""), "missing_event"),
    ("track_without_identity", _without("userId"), "missing_identity"),
    ("track_with_bad_group_id", _with(groupId=7), "invalid_group_id"),
    ("identify_without_user", lambda e: _without("userId")(identify()), "missing_user_id"),
    ("group_without_group", lambda e: _without("groupId")(group()), "missing_group_id"),
    ("group_with_bad_user_id", lambda e: group(userId=""), "invalid_user_id"),
    ("properties_not_object", _with(properties=["x"]), "invalid_properties"),
    ("traits_not_object", lambda e: _with(traits="vip")(identify()), "invalid_traits"),
    (
        "too_large",
        _with(properties={"blob": "x" * (EVENT_LIMIT_BYTES + 1)}),
        "event_too_large",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [pytest.param(mutate, code, id=name) for name, mutate, code in INVALID_EVENTS],
)
def test_invalid_event_is_reported_by_index_while_siblings_are_stored(
    collector: Collector, mutate: Callable[[dict[str, Any]], Any], code: str
) -> None:
    first, bad, last = track(), mutate(track()), track()

    status, reply = post_json(collector, batch_body(first, bad, last))

    assert status == 200
    assert reply["accepted"] == 2
    assert reply["failed"] == 1
    assert [(e["index"], e["code"]) for e in reply["errors"]] == [(1, code)]
    assert reply["errors"][0]["message"]
    assert collector.message_ids() == [first["messageId"], last["messageId"]]
    stats = collector.stats()
    assert (stats.received, stats.stored, stats.rejected) == (3, 2, 1)


def test_event_with_unpaired_surrogate_is_rejected_not_stored(collector: Collector) -> None:
    good = track()
    body = b'{"batch": [%s, %s]}' % (
        json.dumps(good).encode(),
        json.dumps(track(event="\ud800 broken")).encode(),  # json.dumps escapes it
    )

    status, reply = post_json(collector, body)

    assert status == 200
    (error,) = reply["errors"]
    assert (error["index"], error["code"]) == (1, "invalid_encoding")
    assert "Unicode" in error["message"]
    assert collector.message_ids() == [good["messageId"]]


def test_number_beyond_a_double_is_rejected_not_stored_as_infinity(
    collector: Collector,
) -> None:
    good = track()
    huge = json.dumps(track(properties={"n": 1})).replace('"n": 1', '"n": 1e400')
    body = b'{"batch": [%s, %s]}' % (json.dumps(good).encode(), huge.encode())

    status, reply = post_json(collector, body)

    assert status == 200
    assert [error["code"] for error in reply["errors"]] == ["invalid_number"]
    assert collector.message_ids() == [good["messageId"]]


def test_event_just_under_the_size_limit_is_accepted(collector: Collector) -> None:
    event = track(properties={"blob": ""})
    overhead = len(json.dumps(event, separators=(",", ":")).encode())
    event["properties"]["blob"] = "x" * (EVENT_LIMIT_BYTES - overhead)

    status, reply = post_json(collector, batch_body(event))

    assert (status, reply["accepted"]) == (200, 1)


def test_event_one_byte_over_the_size_limit_is_rejected(collector: Collector) -> None:
    event = track(properties={"blob": ""})
    overhead = len(json.dumps(event, separators=(",", ":")).encode())
    event["properties"]["blob"] = "x" * (EVENT_LIMIT_BYTES + 1 - overhead)

    status, reply = post_json(collector, batch_body(event))

    assert (status, reply["accepted"], reply["failed"]) == (200, 0, 1)
    assert reply["errors"][0]["code"] == "event_too_large"
    assert "204801" in reply["errors"][0]["message"]


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-11-22T10:00:00.123Z",
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:00:00.123456+02:00",
        "2026-11-22T10:00:00-0530",
        "2026-11-22 10:00:00",
        "2026-11-22T10:00",
    ],
)
def test_iso_8601_timestamps_are_accepted(timestamp: str) -> None:
    assert is_timestamp(timestamp)


@pytest.mark.parametrize(
    "timestamp",
    ["", "2026-11-22", "2026-13-01T00:00:00Z", "2026-11-22T24:00:00Z", "2026-11-22T10:00:00+25:00"],
)
def test_malformed_timestamps_are_refused(timestamp: str) -> None:
    assert not is_timestamp(timestamp)


# --- duplicates ------------------------------------------------------------------------


def test_duplicate_in_one_batch_is_accepted_but_stored_once(collector: Collector) -> None:
    event = track()

    status, reply = post_json(collector, batch_body(event, event, track()))

    assert (status, reply["accepted"], reply["failed"]) == (200, 3, 0)
    stats = collector.stats()
    assert (stats.received, stats.stored, stats.duplicates) == (3, 2, 1)
    assert collector.message_ids().count(event["messageId"]) == 1


def test_retried_batch_is_accepted_again_but_stored_once(collector: Collector) -> None:
    body = batch_body(track(), track())

    assert post_json(collector, body)[1]["accepted"] == 2
    assert post_json(collector, body)[1]["accepted"] == 2

    stats = collector.stats()
    assert (stats.received, stats.stored, stats.duplicates) == (4, 2, 2)
    assert len(collector.events()) == 2


def test_events_survive_a_restart_on_the_same_file(
    make_collector: MakeCollector, tmp_path: Path
) -> None:
    db = tmp_path / "kept.sqlite3"
    event = track()
    first = make_collector(db=db)
    post_json(first, batch_body(event))
    first.stop()

    second = make_collector(db=db)
    post_json(second, batch_body(event))

    assert second.stats().stored == 1
    assert second.stats().duplicates == 1
    assert second.message_ids() == [event["messageId"]]


# --- authentication --------------------------------------------------------------------


def test_wrong_key_is_refused_when_keys_are_configured(make_collector: MakeCollector) -> None:
    collector = make_collector(write_keys=["right", "also-right"])

    status, reply = post_json(collector, batch_body(track()), key="wrong")

    assert status == 401
    assert reply["status"] == "error"
    assert post_json(collector, batch_body(track()), key="also-right")[0] == 200
    assert collector.stats().stored == 1


def test_any_key_is_accepted_when_none_are_configured(collector: Collector) -> None:
    assert post_json(collector, batch_body(track()), key="whatever")[0] == 200


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "k"])
def test_missing_or_malformed_authorization_is_refused(
    collector: Collector, header: str | None
) -> None:
    conn = connect(collector)
    headers = {} if header is None else {"Authorization": header}
    status, _headers, raw = request(conn, "POST", "/v1/batch", batch_body(track()), headers)
    conn.close()

    assert status == 401
    assert json.loads(raw)["status"] == "error"
    assert collector.stats().stored == 0


# --- malformed requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="malformed_json"),
        pytest.param(b'["batch"]', id="not_an_object"),
        pytest.param(b'{"events": []}', id="no_batch"),
        pytest.param(b'{"batch": {"type": "track"}}', id="batch_not_a_list"),
        pytest.param(b'{"batch": []}', id="empty_batch"),
        pytest.param(batch_body(*(track() for _ in range(101))), id="over_100_events"),
        pytest.param(b'{"batch": [\xff\xfe]}', id="not_utf8"),
        pytest.param(b'{"batch": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="deep"),
        pytest.param(b'{"batch": [{"n": NaN}]}', id="nan"),
        pytest.param(b"", id="empty_body"),
    ],
)
def test_malformed_batch_is_refused_whole(collector: Collector, body: bytes) -> None:
    status, reply = post_json(collector, body)

    assert status == 400
    assert reply["status"] == "error"
    assert collector.stats().received == 0


def test_exactly_100_events_are_accepted(collector: Collector) -> None:
    status, reply = post_json(collector, batch_body(*(track() for _ in range(100))))

    assert (status, reply["accepted"]) == (200, 100)


def test_body_of_exactly_10_mb_is_read(collector: Collector) -> None:
    body = batch_body(track())
    body += b" " * (BODY_LIMIT_BYTES - len(body))  # JSON allows trailing whitespace

    status, reply = post_json(collector, body)

    assert (status, reply["accepted"]) == (200, 1)


def test_oversized_body_is_refused_before_it_is_sent(collector: Collector) -> None:
    head = (
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT_BYTES + 1)
    )
    started = time.monotonic()

    answer = raw_exchange(collector, head)  # returns only because the server closes

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in answer
    assert time.monotonic() - started < TIMEOUT
    assert collector.stats().status_counts == {"413": 1}


def test_oversized_body_with_expect_continue_gets_no_continue(collector: Collector) -> None:
    head = (
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Expect: 100-continue\r\nContent-Length: 20000000\r\n\r\n"
    )

    answer = raw_exchange(collector, head)

    assert answer.startswith(b"HTTP/1.1 413 ")


def test_body_without_content_length_is_refused(collector: Collector) -> None:
    answer = raw_exchange(
        collector, b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 411 ")


HOSTILE_REQUESTS = [
    pytest.param(b"\x00\xff\xfe garbage\r\n\r\n", None, id="binary_request_line"),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, id="long_header"
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 120 + b"\r\n", 431, id="many_headers"
    ),
    pytest.param(
        b"POST /v1/batch HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, id="negative_length"
    ),
    pytest.param(
        b"POST /v1/batch HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400, id="non_ascii_length"
    ),
    pytest.param(
        b"POST /v1/batch HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        411,
        id="chunked",
    ),
    pytest.param(b"BREW /v1/batch HTTP/1.1\r\nHost: x\r\n\r\n", 501, id="unknown_method"),
    # http.server answers a version it cannot parse the HTTP/0.9 way, with a bare body.
    pytest.param(b"GET /healthz HTTP/2.0\r\n\r\n", None, id="unsupported_version"),
]


@pytest.mark.parametrize(("data", "expected"), HOSTILE_REQUESTS)
def test_hostile_request_gets_a_json_error_and_the_server_keeps_serving(
    collector: Collector, data: bytes, expected: int | None
) -> None:
    answer = raw_exchange(collector, data)  # the server closes after a protocol error

    if expected is None:  # answered as HTTP/0.9: a bare body, no status line
        assert answer.startswith(b'{"status":"error"')
    else:
        assert answer.startswith(b"HTTP/1.1 %d " % expected), answer[:100]
        assert answer.endswith(b"}")
    assert post_json(collector, batch_body(track()))[0] == 200


def test_non_utf8_header_value_does_not_break_the_request(collector: Collector) -> None:
    answer = raw_exchange(
        collector, b"GET /healthz HTTP/1.1\r\nX-Bad: \xff\xfe\r\nConnection: close\r\n\r\n"
    )

    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b'{"status":"ok"}')


# --- connections and read endpoints ----------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(collector: Collector) -> None:
    conn = connect(collector)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for _ in range(10):
        status, response_headers, _raw = request(
            conn, "POST", "/v1/batch", batch_body(track()), headers
        )
        assert status == 200
        assert response_headers["Connection"] is None
    conn.close()

    stats = collector.stats()
    assert (stats.connections, stats.requests, stats.stored) == (1, 10, 10)


def test_stats_endpoint_matches_python_api(collector: Collector) -> None:
    post_json(collector, batch_body(track(), track(type="bogus")))
    post_json(collector, b"{", key=KEY)

    conn = connect(collector)
    status, _headers, raw = request(conn, "GET", "/v1/stats")
    conn.close()

    assert status == 200
    assert json.loads(raw) == {
        "requests": 2,
        "connections": 3,
        "received": 2,
        "stored": 1,
        "duplicates": 0,
        "rejected": 1,
        "unacknowledged": 0,
        "status_counts": {"200": 1, "400": 1},
        "faults_injected": {},
    }
    assert collector.stats().connections == 3


def test_events_endpoint_pages_oldest_first(collector: Collector) -> None:
    events = [track(properties={"n": n}) for n in range(5)]
    post_json(collector, batch_body(*events))
    conn = connect(collector)

    status, headers, raw = request(conn, "GET", "/v1/events?limit=2")
    assert status == 200
    page = json.loads(raw)
    assert [record["event"] for record in page] == events[:2]
    assert [record["id"] for record in page] == [1, 2]
    assert headers["X-Klime-Next-After"] == "2"
    status, headers, raw = request(conn, "GET", f"/v1/events?limit=10&after={page[-1]['id']}")
    assert [record["event"] for record in json.loads(raw)] == events[2:]
    status, _headers, raw = request(conn, "GET", "/v1/events")
    assert [record["event"] for record in json.loads(raw)] == events
    status, _headers, raw = request(conn, "GET", "/v1/events?limit=abc")
    assert status == 400
    conn.close()


def test_healthz_and_unknown_paths(collector: Collector) -> None:
    conn = connect(collector)
    assert request(conn, "GET", "/healthz")[::2] == (200, b'{"status":"ok"}')
    status, _headers, raw = request(conn, "GET", "/nope")
    assert status == 404
    assert json.loads(raw)["status"] == "error"
    status, headers, raw = request(conn, "POST", "/v2/batch", b"{}")
    assert status == 404
    assert headers["Connection"] == "close"
    conn.close()


# --- Python API ------------------------------------------------------------------------


def test_wait_for_returns_when_events_arrive(collector: Collector) -> None:
    sender = threading.Timer(0.2, post_json, (collector, batch_body(track(), track())))
    sender.start()
    try:
        assert collector.wait_for(2, timeout=TIMEOUT)
    finally:
        sender.join()
    started = time.monotonic()
    assert not collector.wait_for(3, timeout=0.2)
    assert time.monotonic() - started < TIMEOUT


def test_reset_stats_keeps_the_stored_count(collector: Collector) -> None:
    post_json(collector, batch_body(track()))

    collector.reset_stats()

    stats = collector.stats()
    assert (stats.requests, stats.received, stats.stored, stats.status_counts) == (0, 0, 1, {})


def test_stop_cuts_idle_keep_alive_connections_promptly(collector: Collector) -> None:
    conn = connect(collector)
    request(conn, "GET", "/healthz")  # the handler thread now waits for the next request

    started = time.monotonic()
    collector.stop()
    collector.stop()  # idempotent

    assert time.monotonic() - started < TIMEOUT
    with pytest.raises(RuntimeError):
        collector.events()
    assert collector.stats().requests == 0  # counters stay readable
    conn.close()


def test_down_refuses_connections_and_up_comes_back_with_the_same_data(
    make_collector: MakeCollector,
) -> None:
    collector = make_collector()
    port, url = collector.port, collector.url
    first = track()
    post_json(collector, batch_body(first))

    collector.down()
    collector.down()  # idempotent

    assert not collector.is_up
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    # The port stays the collector's: nothing else can bind it while it is down.
    with socket.socket() as other, pytest.raises(OSError) as taken:
        other.bind(("127.0.0.1", port))
    assert taken.value.errno == errno.EADDRINUSE
    assert collector.stats().stored == 1  # still readable while down
    collector.up()
    assert (collector.is_up, collector.port, collector.url) == (True, port, url)
    post_json(collector, batch_body(first, track()))
    stats = collector.stats()
    assert (stats.stored, stats.duplicates, stats.requests) == (2, 1, 2)


def test_down_cuts_a_delayed_request_without_storing_it(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(delay=30))
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            post(collector, batch_body(track()))
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + TIMEOUT
    while collector.stats().faults_injected.get("delay") != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with collector.outage():
        sender.join(TIMEOUT)
        assert not sender.is_alive()

    assert len(outcome) == 1  # the client saw the connection cut, not an answer
    assert (collector.stats().stored, collector.stats().received) == (0, 0)
    collector.faults = FaultPlan()
    assert post(collector, batch_body(track()))[0] == 200


def test_down_and_up_need_a_running_collector(make_collector: MakeCollector) -> None:
    with pytest.raises(RuntimeError):
        Collector().down()
    collector = make_collector()
    collector.stop()
    with pytest.raises(RuntimeError):
        collector.up()


def test_collector_starts_only_once(make_collector: MakeCollector) -> None:
    collector = make_collector()
    with pytest.raises(RuntimeError):
        collector.start()


def test_context_manager_serves_an_in_memory_database() -> None:
    with Collector() as collector:
        assert collector.url == f"http://127.0.0.1:{collector.port}"
        assert post_json(collector, batch_body(track()))[0] == 200
        assert len(collector.events()) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"error_rate": 1.5},
        {"drop_rate": -0.1},
        {"delay": -1},
        {"delay_rate": 1.01},
        {"status": 42},
        {"retry_after": ""},
        {"retry_after": "soon", "retry_after_as_date": True},
    ],
)
def test_fault_plan_rejects_nonsense(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        FaultPlan(**options)


# --- fault injection -------------------------------------------------------------------


def test_error_rate_answers_503_and_stores_nothing(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(error_rate=1.0))

    status, reply = post_json(collector, batch_body(track()))

    assert status == 503
    assert reply["status"] == "error"
    stats = collector.stats()
    assert (stats.stored, stats.faults_injected) == (0, {"error": 1})
    assert stats.status_counts == {"503": 1}


def test_error_status_is_configurable(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(error_rate=1.0, status=502))

    assert post(collector, batch_body(track()))[0] == 502


@pytest.mark.parametrize("retry_after", ["7", "Wed, 21 Oct 2026 07:28:00 GMT"])
def test_rate_limit_answers_429_with_retry_after(
    make_collector: MakeCollector, retry_after: str
) -> None:
    collector = make_collector(faults=FaultPlan(rate_limit_rate=1.0, retry_after=retry_after))

    status, headers, _raw = post(collector, batch_body(track()))

    assert status == 429
    assert headers["Retry-After"] == retry_after
    assert collector.stats().faults_injected == {"rate_limit": 1}
    assert collector.stats().stored == 0


def test_drop_closes_without_answer_and_stores_nothing(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(drop_rate=1.0))

    with pytest.raises(http.client.RemoteDisconnected):
        post(collector, batch_body(track()))

    stats = collector.stats()
    assert (stats.requests, stats.stored, stats.received) == (1, 0, 0)
    assert (stats.status_counts, stats.faults_injected) == ({}, {"drop": 1})


def test_drop_after_store_stores_but_never_answers(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(drop_after_store_rate=1.0))
    event = track()

    with pytest.raises(http.client.RemoteDisconnected):
        post(collector, batch_body(event))

    assert collector.message_ids() == [event["messageId"]]
    assert collector.stats().faults_injected == {"drop_after_store": 1}
    assert collector.stats().unacknowledged == 1  # a resend of it would be unavoidable


def test_a_client_that_left_before_a_slow_answer_is_counted_unacknowledged(
    make_collector: MakeCollector,
) -> None:
    collector = make_collector(faults=FaultPlan(delay=0.5))
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=0.1)
    with pytest.raises(socket.timeout):  # TimeoutError from Python 3.10 on
        request(
            conn, "POST", "/v1/batch", batch_body(track(), track()), {"Authorization": "Bearer k"}
        )
    conn.close()  # as a client that times out does

    assert collector.wait_for(2, TIMEOUT)  # stored anyway, after the delay
    # The handler counts the loss only after storing, when it finds the client gone:
    # wait for that count, not for the store.
    deadline = time.monotonic() + TIMEOUT
    while collector.stats().unacknowledged < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collector.stats().unacknowledged == 2


def test_retry_after_can_be_an_http_date_ahead(make_collector: MakeCollector) -> None:
    plan = FaultPlan(rate_limit_rate=1.0, retry_after="30", retry_after_as_date=True)
    collector = make_collector(faults=plan)

    status, headers, _raw = post(collector, batch_body(track()))

    assert status == 429
    when = email.utils.parsedate_to_datetime(headers["Retry-After"])
    assert 25 < when.timestamp() - time.time() <= 31


def test_garbage_answers_200_that_is_not_json_after_storing(
    make_collector: MakeCollector,
) -> None:
    collector = make_collector(faults=FaultPlan(garbage_rate=1.0))

    status, _headers, raw = post(collector, batch_body(track()))

    assert status == 200
    with pytest.raises(ValueError):
        json.loads(raw)
    assert collector.stats().stored == 1
    assert collector.stats().faults_injected == {"garbage": 1}


def test_delay_holds_each_answer(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(delay=0.3))

    started = time.monotonic()
    assert post(collector, batch_body(track()))[0] == 200

    assert time.monotonic() - started >= 0.3
    assert collector.stats().faults_injected == {"delay": 1}


def test_delay_rate_holds_only_a_share_of_answers(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(seed=7, delay=0.2, delay_rate=0.3))

    took = []
    for _ in range(20):
        started = time.monotonic()
        assert post(collector, batch_body(track()))[0] == 200
        took.append(time.monotonic() - started)

    delayed = collector.stats().faults_injected["delay"]
    assert 1 <= delayed <= 12
    assert sum(1 for seconds in took if seconds >= 0.2) == delayed


def test_stop_interrupts_an_injected_delay(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(delay=30))

    def send() -> None:
        # Whatever the sender sees (an answer or a cut connection) does not matter here.
        with contextlib.suppress(OSError, http.client.HTTPException):
            post(collector, batch_body(track()))

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + TIMEOUT
    while collector.stats().faults_injected.get("delay") != 1 and time.monotonic() < deadline:
        time.sleep(0.01)

    started = time.monotonic()
    collector.stop()

    assert time.monotonic() - started < 5
    sender.join(TIMEOUT)
    assert not sender.is_alive()


def _statuses(collector: Collector, count: int) -> list[int]:
    return [post(collector, batch_body(track()))[0] for _ in range(count)]


def test_same_seed_gives_same_fault_sequence(make_collector: MakeCollector) -> None:
    plan = FaultPlan(seed=1234, error_rate=0.3, rate_limit_rate=0.3)
    first, second = make_collector(faults=plan), make_collector(faults=plan)

    sequence = _statuses(first, 20)

    assert sequence == _statuses(second, 20)
    assert {200, 429, 503} <= set(sequence)
    first.faults = plan  # assigning a plan restarts its random stream
    assert _statuses(first, 20) == sequence


def test_assigning_an_empty_plan_heals_the_server(make_collector: MakeCollector) -> None:
    collector = make_collector(faults=FaultPlan(error_rate=1.0))
    assert post(collector, batch_body(track()))[0] == 503

    collector.faults = FaultPlan()

    assert collector.faults == FaultPlan()
    assert post(collector, batch_body(track()))[0] == 200
    assert collector.stats().stored == 1


# --- command line ----------------------------------------------------------------------


def _read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the collector printed nothing"
    return str(stream.readline())


def test_cli_serves_until_sigterm_and_keeps_the_events(tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite3"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "klime_mp.collector.cli", "--port", "0", "--db", str(db)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        line = _read_line(proc.stdout, 20)
        assert line.startswith("klime collector listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        event = track()
        headers = {"Authorization": "Bearer any"}
        assert request(conn, "POST", "/v1/batch", batch_body(event), headers)[0] == 200
        conn.close()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    with sqlite3.connect(db) as conn_db:
        rows = conn_db.execute("SELECT message_id, type, body FROM events").fetchall()
    assert rows == [(event["messageId"], "track", json.dumps(event, separators=(",", ":")))]


def test_cli_reports_an_unusable_database_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    db = tmp_path / "missing-dir" / "x.sqlite3"
    command = [sys.executable, "-m", "klime_mp.collector.cli", "--port", "0", "--db", str(db)]

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=20)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("klime collector: ")


def test_cli_applies_fault_flags_and_write_keys(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable, "-m", "klime_mp.collector.cli", "--port", "0", "--db", ":memory:",
        "--write-key", "a", "--write-key", "b", "--rate-limit-rate", "1", "--retry-after", "9",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        port = int(_read_line(proc.stdout, 20).rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        status, headers, _raw = request(
            conn, "POST", "/v1/batch", batch_body(track()), {"Authorization": "Bearer b"}
        )
        conn.close()
        assert (status, headers["Retry-After"]) == (429, "9")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_cli_error_status_and_retry_after_date_flags() -> None:
    from klime_mp.collector import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    flags = [
        "--error-status", "500", "--retry-after", "5", "--retry-after-date",
        "--delay", "0.5", "--delay-rate", "0.25",
    ]  # fmt: skip
    args = parser.parse_args(flags)

    plan = cli.fault_plan(args)
    assert (plan.status, plan.retry_after, plan.retry_after_as_date) == (500, "5", True)
    assert (plan.delay, plan.delay_rate) == (0.5, 0.25)
    assert (args.host, cli.fault_plan(parser.parse_args([]))) == ("127.0.0.1", FaultPlan())
