"""Retries, backoff, Retry-After and permanent errors against a real loopback server."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from klime_mp import KlimeClient, SendError
from klime_mp.delivery.deliverer import parse_retry_after
from tests.scripted_server import Reply, ScriptedServer


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


class Reports:
    def __init__(self) -> None:
        self.errors: list[tuple[BaseException, list[dict[str, Any]]]] = []
        self.successes: list[Any] = []

    def client(self, url: str, **options: Any) -> KlimeClient:
        options.setdefault("retry_initial_delay", 10)
        options.setdefault("flush_interval", 60_000)
        return KlimeClient(
            "key",
            endpoint=url,
            on_error=lambda e, evs: self.errors.append((e, evs)),
            on_success=self.successes.append,
            **options,
        )


def test_503_then_200_resends_the_same_bytes(server: ScriptedServer) -> None:
    server.then(Reply(503), Reply(503))
    reports = Reports()
    client = reports.client(server.url)
    for n in range(3):
        client.track("A", {"n": n}, user_id="u")
    assert client.flush(10)
    bodies = [r.body for r in server.received]
    assert len(bodies) == 3 and len(set(bodies)) == 1  # byte-identical retries
    assert client.stats().retries == 2 and client.stats().sent == 3
    assert reports.errors == [] and reports.successes[0].accepted == 3


@pytest.mark.parametrize("header", ["1", "date"])
def test_429_honours_retry_after(server: ScriptedServer, header: str) -> None:
    value = header
    if header == "date":
        value = email.utils.formatdate(time.time() + 2, usegmt=True)
    server.then(Reply(429, headers=(("Retry-After", value),)))
    client = Reports().client(server.url)
    client.track("A", user_id="u")
    assert client.flush(10)
    first, second = server.received
    assert second.at - first.at >= 0.9  # the backoff alone would be ~10 ms
    assert first.body == second.body


@pytest.mark.parametrize("status", [400, 401])
def test_permanent_errors_are_not_retried(server: ScriptedServer, status: int) -> None:
    server.then(*[Reply(status, body=b'{"status":"error","message":"nope"}')] * 3)
    reports = Reports()
    client = reports.client(server.url)
    client.track("A", user_id="u")
    client.identify("u")
    assert client.flush(10) is False
    bodies = [request.body for request in server.received]
    assert len(set(bodies)) == len(bodies)  # no body sent twice
    # A 400 is about the data: the batch is sent again in halves, each event refused alone.
    sizes = [len(request.events()) for request in server.received]
    assert sizes == ([2, 1, 1] if status == 400 else [2])
    assert all(f"HTTP {status}" in str(error) for error, _events in reports.errors)
    assert [len(events) for _error, events in reports.errors] == ([1, 1] if status == 400 else [2])
    assert client.stats().dropped == {"rejected": 2} and client.stats().retries == 0


def test_retries_stop_after_retry_max_attempts(server: ScriptedServer) -> None:
    server.then(*[Reply(500)] * 10)
    reports = Reports()
    client = reports.client(server.url, retry_max_attempts=3)
    client.track("A", user_id="u")
    assert client.flush(10) is False
    assert len(server.received) == 3
    assert "failed after 3 attempts, last: HTTP 500" in str(reports.errors[0][0])
    assert client.stats().dropped == {"retries_exhausted": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused_is_retried_then_reported() -> None:
    reports = Reports()
    client = reports.client(f"http://127.0.0.1:{free_port()}", retry_max_attempts=2)
    client.track("A", user_id="u")
    assert client.flush(10) is False
    assert client.stats().retries == 1
    message = str(reports.errors[0][0])
    assert "failed after 2 attempts" in message and "ConnectionRefusedError" in message


def test_read_timeout_is_transient(server: ScriptedServer) -> None:
    # A first answer 3 s late against a 1 s timeout; the retry is answered at once. (At
    # 0.2 s, a loaded CI box once timed the retry out too.)
    server.then(Reply(delay=3.0))
    client = Reports().client(server.url, timeout=1.0)
    client.track("A", user_id="u")
    assert client.flush(20)
    assert client.stats().sent == 1 and client.stats().retries >= 1
    assert client.stats().dropped == {}


def test_partial_failure_counts_rejected_events(server: ScriptedServer) -> None:
    body = (
        b'{"status":"ok","accepted":1,"failed":1,"errors":[{"index":1,"message":"bad","code":"x"}]}'
    )
    server.then(Reply(body=body))
    reports = Reports()
    client = reports.client(server.url)
    client.track("A", user_id="u")
    client.track("B", user_id="u")
    assert client.flush(10) is False  # one of the two was refused
    response = reports.successes[0]
    assert (response.accepted, response.failed, response.errors[0].code) == (1, 1, "x")
    assert client.stats().sent == 1 and client.stats().dropped == {"rejected": 1}
    ((error, events),) = reports.errors  # the refused event itself reaches on_error
    assert [e["event"] for e in events] == ["B"] and "rejected 1 of 2" in str(error)


def test_unreadable_200_is_not_resent(server: ScriptedServer) -> None:
    server.then(Reply(body=b"<html>ok</html>"))
    client = Reports().client(server.url)
    client.track("A", user_id="u")
    assert client.flush(10)
    assert len(server.received) == 1


def test_sync_send_returns_the_response_or_raises_send_error(server: ScriptedServer) -> None:
    reports = Reports()
    client = reports.client(server.url, retry_max_attempts=1)
    assert client.identify_sync("u", {"name": "Jane"}).accepted == 1
    server.then(Reply(401))
    with pytest.raises(SendError) as raised:
        client.group_sync("g", user_id="u")
    assert "HTTP 401" in raised.value.message
    assert raised.value.events[0]["groupId"] == "g"
    assert reports.errors == [] and reports.successes == []  # sync results go to the caller


def test_shutdown_interrupts_a_long_backoff(server: ScriptedServer) -> None:
    server.then(Reply(503, headers=(("Retry-After", "30"),)))
    reports = Reports()
    client = reports.client(server.url, shutdown_timeout=1)
    client.track("A", user_id="u")
    assert client.flush(0.5) is False  # sends, gets 503 + Retry-After: 30, backs off
    assert len(server.received) == 1
    started = time.monotonic()
    assert client.shutdown() is False
    assert time.monotonic() - started < 5
    assert reports.errors and len(reports.errors[0][1]) == 1


def test_the_write_key_goes_only_into_the_authorization_header(server: ScriptedServer) -> None:
    client = KlimeClient("sk_secret", endpoint=server.url)
    client.track_sync("A", user_id="u")
    assert b"sk_secret" not in server.received[0].body


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("nan", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    parsed = parse_retry_after(when)
    assert parsed is not None and 28 <= parsed <= 31
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_sender_thread_survives_a_raising_callback(server: ScriptedServer) -> None:
    def explode(_: Any) -> None:
        raise RuntimeError("boom")

    client = KlimeClient("key", endpoint=server.url, on_success=explode, flush_interval=60_000)
    client.track("A", user_id="u")
    assert client.flush(10)
    client.track("B", user_id="u")
    assert client.flush(10)
    assert client.stats().sent == 2
    assert any(t.name == "klime-sender" for t in threading.enumerate())
