"""ASGI without the middleware: an app that only calls ``configure()``, served by real
uvicorn (one process, ``--workers 2``) and Gunicorn's ``UvicornWorker``, stopped with
SIGTERM or SIGINT, delivers every event (``klime_mp.asgi_servers``).

The app holds its events (a ten-minute flush interval, batches of 100), so what reaches
the collector was sent by the shutdown: without the hook, none of it would arrive.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from klime_mp import asgi_servers
from klime_mp.collector import Collector
from klime_mp.demo import ServerProcess, tally
from tests.servers import APPS, Servers, assert_exactly_once, run_load, running_servers

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

NO_MIDDLEWARE = {"NO_KLIME_MIDDLEWARE": "1", "KLIME_TEST_FLUSH_INTERVAL_MS": "600000"}
UVICORN_WORKER = ("--worker-class", "uvicorn.workers.UvicornWorker")


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


def stop_with(server: ServerProcess, signum: int, timeout: float = 60.0) -> int:
    """Stop the server as people do, and wait for it to exit: SIGTERM to its main
    process (``kill``, an orchestrator); SIGINT to its whole process group (Ctrl+C in a
    terminal). Gunicorn answers a SIGINT of its own with a quick shutdown that sends
    SIGQUIT to the workers, which ``UvicornWorker`` does not act on: they run on until
    Gunicorn SIGKILLs them, middleware or not (docs/servers.md)."""
    if signum == signal.SIGINT:
        os.killpg(server.pid, signum)
    else:
        server.signal(signum)
    try:
        return server._session.wait(timeout)  # type: ignore[union-attr]  # started
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop in time:\n{server.log_tail(60)}")


def check_every_event(server: ServerProcess, collector: Collector, signum: int) -> None:
    load = run_load(server)
    assert collector.stats().stored == 0, "held events were sent before the stop"
    status = stop_with(server, signum)
    got = tally(collector, load.events_expected)
    # uvicorn re-raises the stop signal after its shutdown: the process dies of it, or,
    # with Python's own SIGINT handler restored, exits through KeyboardInterrupt.
    assert status in (0, 1, -signum), f"exit status {status}:\n{server.log_tail()}"
    assert "Traceback" not in server.log(), server.log_tail(60)
    try:
        assert_exactly_once(load, got)
    except AssertionError as missing:  # the workers' own account of what they could not send
        raise AssertionError(f"{missing}\n{server.log_tail(60)}") from None


@pytest.mark.server
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_uvicorn_workers_without_middleware_deliver_every_event(
    servers: Servers, collector: Collector, signum: int
) -> None:
    server = servers.uvicorn(workers=2, env=NO_MIDDLEWARE)
    check_every_event(server, collector, signum)


@pytest.mark.server
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_single_uvicorn_process_without_middleware_delivers_every_event(
    servers: Servers, collector: Collector, signum: int
) -> None:
    server = servers.uvicorn(workers=1, env=NO_MIDDLEWARE)
    check_every_event(server, collector, signum)


@pytest.mark.server
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_gunicorn_uvicorn_worker_without_middleware_delivers_every_event(
    servers: Servers, collector: Collector, signum: int
) -> None:
    server = servers.bare_gunicorn(
        *UVICORN_WORKER, workers=2, app="asgi_app:app", chdir=APPS, env=NO_MIDDLEWARE
    )
    check_every_event(server, collector, signum)


@pytest.mark.server
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_hypercorn_without_middleware_delivers_every_event(
    servers: Servers, collector: Collector, signum: int, workers: int
) -> None:
    # Nothing hooks Hypercorn: its workers leave through the ordinary exit paths.
    pytest.importorskip("hypercorn")
    server = servers.hypercorn(workers, env=NO_MIDDLEWARE)
    check_every_event(server, collector, signum)


def test_a_uvicorn_without_the_hook_point_gets_one_warning_naming_the_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from uvicorn.server import Server

    def shutdown(self: Server) -> None:  # not a coroutine: not the shutdown we know
        return None

    monkeypatch.setattr(Server, "shutdown", shutdown)
    with caplog.at_level(logging.WARNING):
        assert asgi_servers.hook_uvicorn() is False
    assert Server.shutdown is shutdown
    [record] = caplog.records
    assert "app.add_middleware(KlimeMiddleware)" in record.getMessage()


def test_uvicorn_is_hooked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.server import Server

    monkeypatch.setattr(Server, "shutdown", Server.shutdown)  # restored afterwards
    assert asgi_servers.hook_uvicorn() is True
    hooked = Server.shutdown
    assert asgi_servers.hook_uvicorn() is True
    assert Server.shutdown is hooked
