"""What one batch's delivery makes of the server's answers: the parsed 200 body, an
unreadable one, the final error after the retries and at the shutdown deadline.

Real HTTP: a scripted loopback server and the real transport. The expected values (the
API's field names and defaults, our messages) are written here, not read from the code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from klime_mp.delivery.deliverer import Deliverer, Delivery
from klime_mp.delivery.transport import Transport
from klime_mp.errors import DeliveryError
from klime_mp.options import build_options
from klime_mp.responses import BatchResponse, ValidationError
from tests.scripted_server import Reply, ScriptedServer

BODY = b'{"batch":[{"type":"track","event":"A","messageId":"m1","userId":"u"}]}'


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def send(
    server: ScriptedServer, *replies: Reply, deadline: float | None = None, **options: Any
) -> Delivery:
    """One batch through a fresh transport, after scripting ``replies``; ``deadline``
    (monotonic): the shutdown deadline the sender would pass. Retries 10 ms apart
    unless ``options`` say otherwise."""
    for reply in replies:
        server.then(reply)
    options.setdefault("retry_initial_delay", 10)
    built = build_options("key", server.url, **options)
    transport = Transport(built)
    try:
        return Deliverer(built, transport, threading.Event()).send(BODY, lambda: deadline)
    finally:
        transport.close()


def test_a_200_body_is_read_field_by_field(server: ScriptedServer) -> None:
    answer = (
        b'{"status":"partial","accepted":3,"failed":2,"errors":['
        b'{"index":1,"message":"userId is required","code":"missing_field"},'
        b'{"index":4,"message":"too big","code":"event_too_large"}]}'
    )
    delivery = send(server, Reply(200, answer))
    assert delivery.error is None and delivery.retries == 0
    assert delivery.response == BatchResponse(
        status="partial",
        accepted=3,
        failed=2,
        errors=[
            ValidationError(1, "userId is required", "missing_field"),
            ValidationError(4, "too big", "event_too_large"),
        ],
    )


def test_a_200_body_without_errors_has_none(server: ScriptedServer) -> None:
    delivery = send(server, Reply(200, b'{"status":"success","accepted":1,"failed":0,"errors":[]}'))
    assert delivery.response == BatchResponse(status="success", accepted=1, failed=0, errors=None)


def test_missing_fields_of_a_200_body_read_as_ok_and_zero(server: ScriptedServer) -> None:
    delivery = send(server, Reply(200, b"{}"))
    assert delivery.response == BatchResponse(status="ok", accepted=0, failed=0, errors=None)


def test_an_error_entry_without_its_fields_reads_as_index_minus_one(
    server: ScriptedServer,
) -> None:
    delivery = send(server, Reply(200, b'{"accepted":0,"failed":1,"errors":[{}]}'))
    assert delivery.response is not None
    assert delivery.response.errors == [ValidationError(-1, "", "")]


def test_an_unreadable_200_is_taken_as_delivered_and_logged_once(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The status is the authority: the server took the batch, so a resend would only
    # duplicate it. The log shows the first 200 characters of what came back.
    garbage = b"<html>" + b"x" * 300
    with caplog.at_level(logging.WARNING, logger="klime_mp"):
        delivery = send(server, Reply(200, garbage))
    assert delivery.error is None
    assert delivery.response == BatchResponse(status="ok", accepted=0, failed=0)
    assert len(server.received) == 1
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Klime answered 200 with an unreadable body: <html>" + "x" * 194]


def test_out_of_attempts_names_the_count_and_the_last_status(server: ScriptedServer) -> None:
    delivery = send(server, Reply(503), Reply(503), Reply(502), retry_max_attempts=3)
    assert delivery.response is None and delivery.retries == 2
    assert isinstance(delivery.error, DeliveryError)
    assert str(delivery.error) == "failed after 3 attempts, last: HTTP 502"
    assert (delivery.error.reason, delivery.error.status) == ("retries_exhausted", 502)


def test_a_refusal_quotes_the_servers_answer(server: ScriptedServer) -> None:
    delivery = send(server, Reply(400, b'{"status":"error","message":"bad batch"}'))
    assert isinstance(delivery.error, DeliveryError)
    assert str(delivery.error) == 'rejected with HTTP 400: {"status":"error","message":"bad batch"}'
    assert (delivery.error.reason, delivery.error.status) == ("rejected", 400)


def test_the_shutdown_deadline_gives_up_with_the_last_status(server: ScriptedServer) -> None:
    # A 503, then a backoff the deadline cannot wait for: no second attempt.
    deadline = time.monotonic() + 5
    delivery = send(server, Reply(503), deadline=deadline, retry_initial_delay=60_000)
    assert len(server.received) == 1
    assert isinstance(delivery.error, DeliveryError)
    assert str(delivery.error) == (
        f"gave up at the shutdown deadline; last error: HTTP 503 from {server.url}/v1/batch"
    )
    assert (delivery.error.reason, delivery.error.status) == ("shutdown_timeout", 503)
    assert delivery.retries == 0


def test_one_outage_counts_its_failures_and_a_success_starts_the_count_again(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backoff's attempt number is the process's run of consecutive failures (one
    # outage, one backoff), whatever batch made them; a delivery ends the run.
    numbers: list[int] = []

    def record(self: Deliverer, attempt_number: int, retry_after: str | None) -> float:
        numbers.append(attempt_number)
        return 0.001

    monkeypatch.setattr(Deliverer, "_delay", record)
    for reply in (Reply(503), Reply(503), Reply(200), Reply(503), Reply(200)):
        server.then(reply)
    built = build_options("key", server.url)
    transport = Transport(built)
    deliverer = Deliverer(built, transport, threading.Event())
    try:
        first = deliverer.send(BODY, lambda: None)
        assert deliverer.in_outage is False
        second = deliverer.send(BODY, lambda: None)
    finally:
        transport.close()
    assert (first.retries, second.retries) == (2, 1)
    assert numbers == [1, 2, 1]


def test_an_attempt_at_shutdown_is_cut_at_the_deadline(server: ScriptedServer) -> None:
    # A server that answers after 20 s, a 30 s timeout, a deadline 0.5 s away: the
    # attempt waits for the deadline, not for the timeout.
    started = time.monotonic()
    delivery = send(
        server, Reply(200, delay=20.0), deadline=started + 0.5, timeout=30, retry_initial_delay=1000
    )
    assert delivery.response is None
    assert time.monotonic() - started < 10  # far under the 20 s answer and 30 s timeout


def test_a_redirect_is_an_answer_not_a_place_to_go(server: ScriptedServer) -> None:
    # Following it would post the batch (and the write key) wherever Location says.
    server.then(Reply(307, headers=(("Location", f"{server.url}/elsewhere"),)))
    built = build_options("key", server.url)
    transport = Transport(built)
    try:
        attempt = transport.post(BODY, 5.0)
    finally:
        transport.close()
    assert attempt.status == 307
    assert len(server.received) == 1


def test_a_200_body_with_some_fields_keeps_the_ones_it_has(server: ScriptedServer) -> None:
    delivery = send(server, Reply(200, b'{"status":"success"}'))
    assert delivery.response == BatchResponse(status="success", accepted=0, failed=0)


def test_the_deadline_counts_the_retries_made_before_it(server: ScriptedServer) -> None:
    # Two attempts (a 503, then a 503 asking for 60 s), then the deadline: one retry.
    replies = (Reply(503), Reply(503, headers=(("Retry-After", "60"),)))
    delivery = send(server, *replies, deadline=time.monotonic() + 10)
    assert len(server.received) == 2
    assert isinstance(delivery.error, DeliveryError)
    assert delivery.error.reason == "shutdown_timeout"
    assert delivery.retries == 1


def test_a_refusal_that_is_not_utf8_is_still_quoted(server: ScriptedServer) -> None:
    delivery = send(server, Reply(400, b"bad \xff\xfe batch"))
    assert str(delivery.error) == "rejected with HTTP 400: bad \ufffd\ufffd batch"
