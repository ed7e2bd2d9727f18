"""ASGI: KlimeMiddleware flushes at lifespan shutdown and passes every message through;
under real ``uvicorn --workers 2`` and Gunicorn's ``UvicornWorker`` every event arrives.

uvicorn ends a worker by re-raising SIGTERM after the lifespan shutdown, so no exit hook
runs: without the middleware a worker's queued events die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import klime_mp
from klime_mp.asgi import KlimeMiddleware
from klime_mp.collector import Collector
from klime_mp.delivery import spooled as recovery
from tests.servers import (
    APPS,
    Servers,
    assert_exactly_once,
    run_load,
    running_servers,
    stop_and_count,
    wait_for_log,
)

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

Message = dict[str, Any]
HOLD = {"flush_interval": 600_000, "max_batch_size": 100}  # only a flush sends


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


class Channel:
    """A server's side of one ASGI call: messages it gives the app, messages it got."""

    def __init__(self, *incoming: Message) -> None:
        self.incoming = list(incoming)
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.incoming:
            return self.incoming.pop(0)
        await asyncio.sleep(3600)  # a real server would wait for the next message
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


LIFESPAN = ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})


async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
    """An app that speaks lifespan and tracks an event in its own shutdown code."""
    assert scope["type"] == "lifespan"
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            klime_mp.track("Shutting Down", user_id="system")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def http_only_app(scope: Any, receive: Any, send: Any) -> None:
    """An app that does not support lifespan (as many hand-written ones)."""
    if scope["type"] != "http":
        raise RuntimeError("only http")
    klime_mp.track("Page Viewed", user_id="usr_1")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": b"hi", "more_body": False})


@pytest.fixture
def held_client(collector: Collector) -> Iterator[klime_mp.KlimeClient]:
    client = klime_mp.configure("key", endpoint=collector.url, **HOLD)
    try:
        yield client
    finally:
        client.shutdown()


def test_lifespan_shutdown_sends_queued_events_before_completing(
    held_client: klime_mp.KlimeClient, collector: Collector
) -> None:
    held_client.track("Queued Before Shutdown", user_id="usr_1")
    channel = Channel(*LIFESPAN)
    stored_at_completion: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            stored_at_completion.append(collector.stats().stored)
        await channel.send(message)

    run(KlimeMiddleware(lifespan_app)({"type": "lifespan"}, channel.receive, send))

    types = [message["type"] for message in channel.sent]
    assert types == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    # Both events, including the one tracked by the app's own shutdown code, were
    # stored before the server heard that shutdown completed.
    assert stored_at_completion == [2]


def test_app_without_lifespan_still_gets_the_shutdown_flush(
    held_client: klime_mp.KlimeClient, collector: Collector
) -> None:
    held_client.track("Queued", user_id="usr_1")
    channel = Channel(*LIFESPAN)
    run(KlimeMiddleware(http_only_app)({"type": "lifespan"}, channel.receive, channel.send))
    types = [message["type"] for message in channel.sent]
    assert types == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert collector.stats().stored == 1


def test_app_that_returns_on_lifespan_still_gets_the_shutdown_flush(
    held_client: klime_mp.KlimeClient, collector: Collector
) -> None:
    async def ignores_lifespan(scope: Any, receive: Any, send: Any) -> None:
        return None

    held_client.track("Queued", user_id="usr_1")
    channel = Channel(*LIFESPAN)
    run(KlimeMiddleware(ignores_lifespan)({"type": "lifespan"}, channel.receive, channel.send))
    assert [m["type"] for m in channel.sent][-1] == "lifespan.shutdown.complete"
    assert collector.stats().stored == 1


# A process of the same app that queues 50 events in its spool, sends none (below a
# full batch, no interval due) and dies of SIGKILL: what the OOM killer leaves behind.
KILLED_SIBLING = textwrap.dedent("""
    import os, signal, sys
    from klime_mp import KlimeClient

    client = KlimeClient("key", sys.argv[1], spool_dir=sys.argv[2], **{hold})
    for n in range(50):
        client.track("Left By The Killed", {{"n": n}}, user_id="usr_2")
    os.kill(os.getpid(), signal.SIGKILL)
""").format(hold=HOLD)


@pytest.mark.fork
def test_lifespan_shutdown_sends_what_a_sigkilled_sibling_left_in_the_spool(
    collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvicorn re-raises SIGTERM after the lifespan shutdown: it is the last chance of a
    # worker to send a killed sibling's events, or they wait on disk for a next start.
    monkeypatch.setattr(recovery, "SCAN_INTERVAL_S", 3600.0)  # only a shutdown looks again
    spool = tmp_path / "spool"
    client = klime_mp.configure("key", endpoint=collector.url, spool_dir=spool, **HOLD)
    try:
        client.track("Queued By The Survivor", user_id="usr_1")
        assert client.flush(10) is True  # its sender is running and has looked for orphans
        killed = subprocess.run(
            [sys.executable, "-c", KILLED_SIBLING, collector.url, str(spool)], timeout=60
        )
        assert killed.returncode == -signal.SIGKILL
        assert collector.stats().stored == 1, "nothing of the killed process was sent yet"

        channel = Channel(*LIFESPAN)
        run(KlimeMiddleware(http_only_app)({"type": "lifespan"}, channel.receive, channel.send))

        assert [m["type"] for m in channel.sent][-1] == "lifespan.shutdown.complete"
        events = Counter(event["event"] for event in collector.events())
        assert events == {"Queued By The Survivor": 1, "Left By The Killed": 50}
    finally:
        client.shutdown()


def test_a_process_that_carries_on_after_lifespan_shutdown_tracks_as_before(
    held_client: klime_mp.KlimeClient, collector: Collector
) -> None:
    # A test suite runs the lifespan once per TestClient block, in one process: after a
    # shutdown the client queues again (no blocking send per call) and sends on flush.
    channel = Channel(*LIFESPAN)
    run(KlimeMiddleware(lifespan_app)({"type": "lifespan"}, channel.receive, channel.send))
    assert collector.stats().stored == 1  # "Shutting Down"
    held_client.track("After The Shutdown", user_id="usr_1")
    assert held_client.queue_size() == 1 and collector.stats().stored == 1
    assert held_client.flush(10) is True
    assert collector.stats().stored == 2


def test_a_startup_failure_of_the_app_is_the_servers_to_see() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        raise RuntimeError("no database")

    channel = Channel(*LIFESPAN)
    with pytest.raises(RuntimeError, match="no database"):
        run(KlimeMiddleware(failing)({"type": "lifespan"}, channel.receive, channel.send))
    assert channel.sent == [{"type": "lifespan.startup.failed", "message": "no database"}]


def test_http_messages_pass_through_untouched(held_client: klime_mp.KlimeClient) -> None:
    request = {"type": "http.request", "body": b"", "more_body": False}
    direct, wrapped = Channel(dict(request)), Channel(dict(request))
    scope = {"type": "http", "method": "GET", "path": "/"}
    run(http_only_app(dict(scope), direct.receive, direct.send))
    run(KlimeMiddleware(http_only_app)(dict(scope), wrapped.receive, wrapped.send))
    assert wrapped.sent == direct.sent


def test_no_flush_after_a_request_by_default(
    held_client: klime_mp.KlimeClient, collector: Collector
) -> None:
    channel = Channel({"type": "http.request", "body": b"", "more_body": False})
    run(KlimeMiddleware(http_only_app)({"type": "http"}, channel.receive, channel.send))
    assert collector.stats().stored == 0
    assert held_client.queue_size() == 1


def test_flush_after_request_sends_the_requests_events(
    held_client: klime_mp.KlimeClient, collector: Collector
) -> None:
    channel = Channel({"type": "http.request", "body": b"", "more_body": False})
    middleware = KlimeMiddleware(http_only_app, flush_after_request=True)
    run(middleware({"type": "http"}, channel.receive, channel.send))
    assert collector.stats().stored == 1


def test_flush_waits_off_the_event_loop(held_client: klime_mp.KlimeClient) -> None:
    # The flush is held until the loop has run 20 ticks: were it waiting on the loop's
    # thread, no tick could run and it would never be released (the wait times out).
    held_client.track("Queued", user_id="usr_1")
    release = threading.Event()
    original = held_client.flush

    def slow_flush(timeout: float | None = None) -> bool:
        release.wait(10)
        return original(timeout)

    held_client.flush = slow_flush  # type: ignore[method-assign]

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while not release.is_set():
                ticks += 1
                if ticks == 20:
                    release.set()
                await asyncio.sleep(0.01)

        done = await asyncio.gather(held_client.flush_async(10), ticker())
        assert done[0] is True
        return ticks

    assert run(scenario()) >= 20


def test_module_flush_async_sends_the_default_clients_events(
    held_client: klime_mp.KlimeClient, collector: Collector
) -> None:
    klime_mp.track("Queued", user_id="usr_1")
    assert run(klime_mp.flush_async(10)) is True
    assert collector.stats().stored == 1


def test_starlette_add_middleware(held_client: klime_mp.KlimeClient, collector: Collector) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    def home(request: Any) -> PlainTextResponse:
        klime_mp.track("Home Viewed", user_id="usr_1")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(KlimeMiddleware)

    async def serve() -> tuple[list[Message], int]:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        said: list[Message] = []

        async def send(message: Message) -> None:
            said.append(message)

        await inbox.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(app({"type": "lifespan", "state": {}}, inbox.get, send))
        while not said:
            await asyncio.sleep(0.01)
        http = Channel({"type": "http.request", "body": b"", "more_body": False})
        await app(http_scope("/"), http.receive, http.send)
        assert http.sent[-1]["body"] == b"ok"
        stored_while_serving = collector.stats().stored
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 30)
        return said, stored_while_serving

    said, stored_while_serving = run(serve())
    assert [message["type"] for message in said][-1] == "lifespan.shutdown.complete"
    assert stored_while_serving == 0  # held in the queue until the lifespan shutdown
    assert collector.stats().stored == 1


def http_scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"app": None}, TypeError),
        ({"app": http_only_app, "timeout": 0}, ValueError),
        ({"app": http_only_app, "timeout": True}, ValueError),
        ({"app": http_only_app, "flush_after_request": "yes"}, TypeError),
    ],
)
def test_misuse_names_the_argument(arguments: dict[str, Any], error: type[Exception]) -> None:
    name = next(key for key in arguments if key != "app") if len(arguments) > 1 else "app"
    with pytest.raises(error, match=name):
        KlimeMiddleware(**arguments)


# -- real servers ----------------------------------------------------------------------


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


@pytest.mark.server
def test_uvicorn_workers_deliver_every_event_on_sigterm(
    servers: Servers, collector: Collector
) -> None:
    server = servers.uvicorn(workers=2)
    load = run_load(server)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert 1 <= len(load.requests_by_pid) <= 2  # an async worker may take them all


@pytest.mark.server
def test_gunicorn_uvicorn_worker_delivers_every_event_on_sigterm(
    servers: Servers, collector: Collector
) -> None:
    server = servers.bare_gunicorn(
        "--worker-class",
        "uvicorn.workers.UvicornWorker",
        workers=2,
        app="asgi_app:app",
        chdir=APPS,
    )
    load = run_load(server)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert 1 <= len(load.requests_by_pid) <= 2  # an async worker may take them all


@pytest.mark.server
def test_uvicorn_reload_delivers_the_old_processes_events(
    servers: Servers, collector: Collector, tmp_path: Path
) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    source = (APPS / "asgi_app.py").read_text()
    (app_dir / "asgi_app.py").write_text(source)
    server = servers.uvicorn("--reload", "--reload-dir", str(app_dir), workers=1, app_dir=app_dir)

    def edit_the_code() -> None:
        # StatReload notes each file's mtime on its first scan, 0.25 s or so after start:
        # an edit made before that scan goes unnoticed. Edit again until it reloads.
        for attempt in range(4):
            (app_dir / "asgi_app.py").write_text(f"{source}\n# edit {attempt}\n")
            with contextlib.suppress(AssertionError):
                wait_for_log(server, "Application startup complete", 2, timeout=5.0)
                return
        pytest.fail(f"uvicorn did not reload:\n{server.log_tail()}")

    load = run_load(server, total=60, at={30: edit_the_code})
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert len(load.requests_by_pid) >= 2  # served before and after the reload


@pytest.mark.server
def test_fastapi_example_under_uvicorn_workers_delivers_every_event(
    servers: Servers, collector: Collector
) -> None:
    pytest.importorskip("fastapi")
    example = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app"
    server = servers.uvicorn(workers=2, app_dir=example, app="app:app")
    load = run_load(server, total=100, concurrency=8)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    types = Counter(event["type"] for event in collector.events())
    assert types == {"identify": 10, "group": 10, "track": 100}  # 10 users, 100 requests
