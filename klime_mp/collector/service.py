"""``Collector``: a local Klime-compatible API server that tests start and stop."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .app import CollectorApp
from .faults import FaultPlan
from .server import CollectorHTTPServer
from .stats import CollectorStats
from .store import EventStore

logger = logging.getLogger("klime_mp.collector")

# serve_forever() notices shutdown() only between polls; short polls make stop() quick.
_POLL_SECONDS = 0.05
# How long stop() waits for handler threads after cutting their connections.
_STOP_GRACE_SECONDS = 5.0


class Collector:
    """Serves ``POST /v1/batch`` and friends from a daemon thread.

    Use as a context manager, or call ``start()`` and ``stop()``. With ``port=0`` the
    OS picks a free port; read it back from ``port`` or ``url`` after ``start()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        db: str | os.PathLike[str] = ":memory:",
        write_keys: Iterable[str] = (),
        faults: FaultPlan | None = None,
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
        self._lock = threading.Lock()
        self._app: CollectorApp | None = None
        self._server: CollectorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> Collector:
        """Bind and serve in a daemon thread; returns self for chaining."""
        with self._lock:
            if self._app is not None or self._stopped:
                raise RuntimeError("a Collector can be started only once")
            store = EventStore(self._db)
            app = CollectorApp(store, self._write_keys, self._faults)
            try:
                server = CollectorHTTPServer((self._host, self._port), app)
            except BaseException:
                store.close()
                raise
            self._app, self._server = app, server
            self._port = server.server_port
            self._thread = threading.Thread(
                target=server.serve_forever,
                args=(_POLL_SECONDS,),
                name=f"klime-collector:{self._port}",
                daemon=True,
            )
            self._thread.start()
        logger.debug("collector listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, cut live connections, close the database. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            app, server, thread = self._app, self._server, self._thread
        if app is None or server is None or thread is None:
            return  # never started
        app.stopping.set()
        server.shutdown()
        thread.join()
        if not server.close_clients(_STOP_GRACE_SECONDS):
            logger.warning("collector handler threads still busy after stop()")
        server.server_close()
        app.store.close()

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
        if self._server is None:
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
