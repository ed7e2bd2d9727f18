"""klime_mp.wsgi.FlushMiddleware: a request's events are sent when its response closes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.wsgi import FlushMiddleware, flush_process

QUIET = 60_000  # ms: the background interval never fires during a test


class Body:
    """A response iterable that records whether the server closed it."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"ok"

    def close(self) -> None:
        self.closed = True


def tracking_app(client: KlimeClient, count: int = 1, body: Any = None) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        for n in range(count):
            client.track("Report Generated", {"n": n}, user_id="usr_1")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body if body is not None else [b"ok"]

    return app


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    pass


@pytest.fixture
def client(collector: Collector) -> Iterator[KlimeClient]:
    client = KlimeClient("key", endpoint=collector.url, flush_interval=QUIET)
    yield client
    client.shutdown()


def test_events_are_sent_when_the_server_closes_the_response(
    client: KlimeClient, collector: Collector
) -> None:
    body = Body()
    app = FlushMiddleware(tracking_app(client, count=3, body=body))

    response = app({}, start_response)
    assert b"".join(response) == b"ok"
    assert collector.stats().stored == 0  # queued, not sent: the body is not closed yet

    response.close()  # type: ignore[attr-defined]  # PEP 3333: the server calls it
    assert body.closed  # the app's own close() still runs
    assert collector.stats().stored == 3  # flushed before close() returned


def test_a_failing_app_still_flushes_what_it_tracked(
    client: KlimeClient, collector: Collector
) -> None:
    def failing(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        client.track("Export Started", user_id="usr_1")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        FlushMiddleware(failing)({}, start_response)
    assert collector.stats().stored == 1


def test_a_given_client_is_the_one_flushed(client: KlimeClient, collector: Collector) -> None:
    other = KlimeClient("key", endpoint=collector.url, flush_interval=QUIET)
    try:
        other.track("Elsewhere", user_id="usr_2")
        app = FlushMiddleware(tracking_app(client), client=client)
        app({}, start_response).close()  # type: ignore[attr-defined]
        assert collector.stats().stored == 1
        assert other.queue_size() == 1
    finally:
        other.shutdown()


def test_without_a_client_every_client_of_the_process_is_flushed(
    client: KlimeClient, collector: Collector
) -> None:
    other = KlimeClient("key", endpoint=collector.url, flush_interval=QUIET)
    try:
        other.track("Elsewhere", user_id="usr_2")
        client.track("Here", user_id="usr_1")
        # (its result also covers clients other tests of this worker process left behind)
        flush_process(5.0)
        assert collector.stats().stored == 2
    finally:
        other.shutdown()


def test_flush_process_with_no_clients_returns_at_once() -> None:
    # In a fresh interpreter: this test process may hold clients other tests left with
    # events for a dead server, and the promise is about a process with none.
    code = (
        "import time\n"
        "from klime_mp.wsgi import flush_process\n"
        "started = time.monotonic()\n"
        "print(flush_process(5.0), time.monotonic() - started < 1.0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["True", "True"], out.stderr


@pytest.mark.parametrize("timeout", [0, -1, "1", True])
def test_a_bad_timeout_is_refused_by_name(timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        FlushMiddleware(lambda environ, start_response: [], timeout=timeout)


def test_an_app_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="app must be a WSGI callable"):
        FlushMiddleware("app:app")  # type: ignore[arg-type]


def test_a_client_stuck_in_an_outage_does_not_starve_the_others(collector: Collector) -> None:
    # Servers that accept and never answer: the stuck clients' flushes cannot finish.
    # Waiting for them one after another would wake the healthy client only when their
    # time was up; it must be woken at once, whatever the order of the clients.
    import socket
    import threading

    with socket.create_server(("127.0.0.1", 0)) as black_hole:
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        stuck = [
            KlimeClient("key", url, flush_interval=QUIET, shutdown_timeout=0.5) for _ in range(3)
        ]
        healthy = KlimeClient("key", endpoint=collector.url, flush_interval=QUIET)
        try:
            for client in stuck:
                client.track("Stuck", user_id="usr_1")
            healthy.track("Healthy", user_id="usr_2")
            flushing = threading.Thread(target=flush_process, args=(6.0,))
            flushing.start()
            assert collector.wait_for(1, timeout=3.0)  # long before the 6 s are up
            flushing.join(10)
        finally:
            for client in [*stuck, healthy]:
                client.shutdown()
