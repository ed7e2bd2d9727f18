"""An outage speaks: one WARNING with its cause in plain words when it begins, one INFO
when it ends, nothing per batch; failed attempts counted as they happen; a debug switch
that logs each request without the key; a batch whose answer never came counted apart
from a loss; and a warning when events wait too long with nothing delivered."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.delivery.deliverer import Deliverer
from klime_mp.delivery.transport import Transport
from klime_mp.options import build_options
from tests.scripted_server import Reply, ScriptedServer

KEY = "secret-write-key-1234"
BODY = b'{"batch":[]}'


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def klime_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "klime" and r.levelno == level]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_outage_logs_its_cause_once_and_its_end_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    collector = Collector(db=tmp_path / "events.sqlite3", port=port)  # down for now
    client = KlimeClient(
        KEY,
        f"http://127.0.0.1:{port}",
        max_batch_size=100,  # the sender waits for the flush: all 35 wait at the first attempt
        retry_initial_delay=50,
        retry_max_attempts=1000,  # nothing given up: the outage ends with all delivered
        flush_interval=60_000,
    )
    caplog.set_level(logging.DEBUG, logger="klime")
    try:
        for n in range(35):
            client.track("During The Outage", {"n": n}, user_id="u")
        assert client.flush(0.1) is False
        # Failed attempts count as they happen, before any batch is settled.
        wait_for(lambda: client.stats().failed_requests >= 4)
        stats = client.stats()
        assert (stats.failed, stats.dropped, stats.retries) == (0, {}, 0)
        assert stats.last_error == f"connection refused to 127.0.0.1:{port}"
        assert stats.last_success_at is None
        collector.start()
        assert client.flush(20) is True
        assert collector.stats().stored == 35
        stats = client.stats()
        assert stats.last_success_at is not None and time.time() - stats.last_success_at < 20
    finally:
        client.shutdown()
        collector.stop()
    warnings = klime_records(caplog, logging.WARNING)
    assert warnings == [
        f"Klime: cannot deliver events: connection refused to 127.0.0.1:{port}; "
        "retrying with backoff (events waiting: 35)"
    ]
    [ended] = klime_records(caplog, logging.INFO)
    assert ended.startswith("Klime: delivering again after ")
    assert f"failed attempts, last: connection refused to 127.0.0.1:{port}); " in ended
    assert ended.endswith("delivered now: 35, still waiting: 0")


def test_an_http_error_is_named_with_its_status_and_url(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.then(Reply(503), Reply(503), Reply(200, b'{"status":"ok","accepted":1,"failed":0}'))
    client = KlimeClient(KEY, server.url, retry_initial_delay=20)
    try:
        client.track("A", user_id="u")
        assert client.flush(10) is True
        assert client.stats().failed_requests == 2
        assert client.stats().retries == 2
    finally:
        client.shutdown()
    [warning] = klime_records(caplog, logging.WARNING)
    assert warning.startswith(f"Klime: cannot deliver events: HTTP 503 from {server.url}/v1/batch")


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_debug_switch_logs_each_request_without_the_key(
    collector: Collector,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    if how == "environment":
        monkeypatch.setenv("KLIME_DEBUG", "1")
    options: dict[str, Any] = {"debug": True} if how == "option" else {}
    client = KlimeClient(KEY, collector.url, max_batch_size=3, **options)
    caplog.set_level(logging.DEBUG, logger="klime")
    try:
        for n in range(3):
            client.track("Debugged", {"n": n}, user_id="u")
        assert client.flush(10) is True
    finally:
        client.shutdown()
    lines = [m for m in klime_records(caplog, logging.DEBUG) if "POST" in m]
    assert len(lines) == 1
    assert lines[0].startswith(f"Klime: POST {collector.url}/v1/batch: 200 (3 events, ")
    assert " bytes, " in lines[0] and lines[0].endswith(" ms)")
    assert all(KEY not in record.getMessage() for record in caplog.records)


def test_no_request_is_logged_without_the_switch(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    client = KlimeClient(KEY, collector.url)
    caplog.set_level(logging.DEBUG, logger="klime")
    client.track("Quiet", user_id="u")
    assert client.flush(10) is True
    client.shutdown()
    assert not [m for m in klime_records(caplog, logging.DEBUG) if "POST" in m]


def test_a_batch_sent_but_unanswered_at_the_deadline_is_not_called_lost(
    server: ScriptedServer,
) -> None:
    # A slow server at an exit budget: the request went out, its answer came too late.
    # The server stored it, so this must not read as a loss to re-send or alarm on.
    server.then(Reply(200, b'{"status":"ok","accepted":1,"failed":0}', delay=2.0))
    built = build_options(KEY, server.url)
    transport = Transport(built)
    try:
        deliverer = Deliverer(built, transport, threading.Event())
        delivery = deliverer.send(BODY, lambda: time.monotonic() + 0.5)
    finally:
        transport.close()
    assert delivery.error is not None
    assert delivery.error.reason == "answer_unknown"
    assert str(delivery.error).startswith("sent, answer unknown (the server may have them): ")
    assert "no answer from 127.0.0.1:" in str(delivery.error)


def test_a_shutdown_deadline_names_the_outage_cause(tmp_path: Path) -> None:
    port = free_port()
    errors: list[BaseException] = []
    client = KlimeClient(
        KEY,
        f"http://127.0.0.1:{port}",
        shutdown_timeout=0.3,
        retry_initial_delay=1000,
        on_error=lambda error, events: errors.append(error),
    )
    for n in range(5):
        client.track("Lost", {"n": n}, user_id="u")
    assert client.shutdown() is False
    assert client.stats().dropped == {"shutdown_timeout": 5}
    [error] = errors
    assert f"connection refused to 127.0.0.1:{port}" in str(error)


def test_events_waiting_too_long_get_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    client = KlimeClient(
        KEY,
        f"http://127.0.0.1:{port}",
        spool_dir=tmp_path / "spool",  # nothing is given up: it waits on disk
        retry_initial_delay=100,
        stall_warning=0.5,
    )
    caplog.set_level(logging.INFO, logger="klime")
    try:
        client.track("Stuck", user_id="u")
        client.flush(0.1)
        wait_for(lambda: any("nothing delivered" in m for m in klime_records(caplog, 30)))
        time.sleep(1.5)  # more wake-ups of the sender: still one warning
    finally:
        client.shutdown()
    stalls = [m for m in klime_records(caplog, logging.WARNING) if "nothing delivered" in m]
    assert len(stalls) == 1
    assert "(events waiting: 1; last error: connection refused to 127.0.0.1:" in stalls[0]


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [("debug", "yes", TypeError), ("metrics", 1, TypeError), ("stall_warning", 0, ValueError)],
)
def test_new_options_are_checked(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=name):
        KlimeClient(KEY, "http://127.0.0.1:1", **{name: value})
