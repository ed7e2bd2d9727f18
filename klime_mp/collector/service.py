"""``Collector``: a local Klime-compatible API server that tests start and stop."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from .app import CollectorApp
from .faults import FaultPlan
from .server import CollectorHTTPServer, address_family
from .stats import CollectorStats
from .store import EventStore

logger = logging.getLogger("klime_mp.collector")

# serve_forever() notices shutdown() only between polls; short polls make stop() quick.
_POLL_SECONDS = 0.05
# How long stop() waits for handler threads after cutting their connections.
_STOP_GRACE_SECONDS = 5.0
# How long up() keeps trying to bind the port it had before down().
_REBIND_SECONDS = 5.0


class Collector:
    """Serves ``POST /v1/batch`` and friends from a daemon thread.

    Use as a context manager, or call ``start()`` and ``stop()``. With ``port=0`` the
    OS picks a free port; read it back from ``port`` or ``url`` after ``start()``.
    ``down()`` and ``up()`` (or ``with collector.outage():``) take it away and bring it
    back on the same port with the same database, as a server restart would.

    ``sink=True`` is the benchmark's mode: every POST, on any path and with any key (so
    Segment's and PostHog's SDKs too), is answered ``200 {}`` at once and only its
    events are counted (``stats().received``); nothing is validated or stored.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        db: str | os.PathLike[str] = ":memory:",
        write_keys: Iterable[str] = (),
        faults: FaultPlan | None = None,
        sink: bool = False,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {port!r}")
        if isinstance(write_keys, str):
            raise TypeError("write_keys must be an iterable of keys, not a single string")
        self._host = host
        self._port = port
        self._db = db
        self._write_keys = tuple(write_keys)
        self._faults = faults if faults is not None else FaultPlan()
        self._sink = sink
        self._lock = threading.Lock()
        self._app: CollectorApp | None = None
        self._server: CollectorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._held: socket.socket | None = None  # the port, kept while down
        self._stopped = False

    def start(self) -> Collector:
        """Bind and serve in a daemon thread; returns self for chaining."""
        with self._lock:
            if self._app is not None or self._stopped:
                raise RuntimeError("a Collector can be started only once")
            store = EventStore(self._db)
            app = CollectorApp(store, self._write_keys, self._faults, self._sink)
            try:
                self._serve(app, bind_timeout=0.0)
            except BaseException:
                store.close()
                raise
            self._app = app
        logger.debug("collector listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, cut live connections, close the database. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            app = self._app
            if app is None:
                return  # never started
            self._halt(app)
            self._release_port()
        app.store.close()

    def down(self) -> None:
        """Go away like a crashed or restarting server: stop listening (new connections
        are refused) and cut the open ones, answering nothing more. The database, the
        counters and the fault plan are kept for ``up()``, and so is the port: a socket
        bound to it and not listening refuses connections and keeps any other program
        (another test's collector binding port 0) from taking it meanwhile, which would
        hand that program the events still being retried here."""
        with self._lock:
            app = self._running_app()
            if self._server is not None:
                self._halt(app)
                self._held = _hold_port(self._host, self._port)

    def up(self, bind_timeout: float = _REBIND_SECONDS) -> None:
        """Come back after ``down()`` on the same address, port and database."""
        with self._lock:
            app = self._running_app()
            if self._server is None:
                app.stopping.clear()
                self._serve(app, bind_timeout)  # binds beside the held socket (both reuse)
                self._release_port()
        logger.debug("collector back on %s", self.url)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """``with collector.outage(): ...``: down inside the block, up after it."""
        self.down()
        try:
            yield
        finally:
            self.up()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def _serve(self, app: CollectorApp, bind_timeout: float) -> None:
        """Bind (retrying for ``bind_timeout`` while the port is busy) and serve."""
        deadline = time.monotonic() + bind_timeout
        while True:
            try:
                server = CollectorHTTPServer((self._host, self._port), app)
                break
            except OSError as exc:
                # After down() an outgoing connection of another program may hold the
                # port for a moment; a restarted server retries the same way.
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self._server = server
        self._port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            args=(_POLL_SECONDS,),
            name=f"klime-collector:{self._port}",
            daemon=True,
        )
        self._thread.start()

    def _halt(self, app: CollectorApp) -> None:
        """Stop the HTTP side (caller holds ``_lock``); a no-op when already down."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        app.stopping.set()  # cuts injected delays short: they answer nothing
        server.shutdown()
        thread.join()
        if not server.close_clients(_STOP_GRACE_SECONDS):
            logger.warning("collector handler threads still busy after stop()")
        server.server_close()

    def _release_port(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def _running_app(self) -> CollectorApp:
        if self._app is None or self._stopped:
            raise RuntimeError("the collector is not running (never started, or stopped)")
        return self._app

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port after start(); the requested one before."""
        return self._port

    @property
    def url(self) -> str:
        if self._app is None:
            raise RuntimeError("the collector has no URL until start()")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def faults(self) -> FaultPlan:
        return self._app.faults if self._app is not None else self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        if not isinstance(plan, FaultPlan):
            raise TypeError(f"faults must be a FaultPlan, got {type(plan).__name__}")
        self._faults = plan
        if self._app is not None:
            self._app.faults = plan

    def stats(self) -> CollectorStats:
        return self._started_app().stats.snapshot(self._started_app().store.count)

    def reset_stats(self) -> None:
        """Zero the counters; ``stored`` still reports what the database holds."""
        self._started_app().stats.reset()

    def events(self) -> list[dict[str, Any]]:
        """Every stored event body, oldest first (only until stop())."""
        bodies = self._started_app().store.column("body")
        return [json.loads(body) for body in bodies]

    def start_run(self, name: str | None = None) -> int:
        """Begin a new run (as ``POST /v1/runs`` does) and return its number: events
        stored from now on carry it, and ``GET /v1/events?run=latest`` shows only them."""
        return self._started_app().store.start_run(name).run

    def message_ids(self) -> list[str]:
        """Every stored messageId, oldest first (only until stop())."""
        return self._started_app().store.column("message_id")

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` unique events are stored; False on timeout."""
        return self._started_app().store.wait_for_count(count, timeout)

    def _started_app(self) -> CollectorApp:
        if self._app is None:
            raise RuntimeError("the collector is not started")
        return self._app


def _hold_port(host: str, port: int) -> socket.socket | None:
    """A socket bound to ``host:port`` and never listening, or None if the port cannot be
    had again at once (``up()`` then retries as it would anyway). SO_REUSEADDR, as the
    HTTP server sets it, so that a connection of ours in TIME_WAIT does not stand in the
    way."""
    held = socket.socket(address_family(host))
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        held.bind((host, port))
    except OSError:
        held.close()
        return None
    return held
