"""Shared helpers for the server tests: real Gunicorn and uWSGI serving the example app.

Each test gets its own directory, free loopback ports and a ``Servers`` that SIGKILLs
every server's process group at teardown. The servers are the demo's
(``klime_mp.demo``), so every server test also exercises what ``klime-mp demo`` runs.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest

from klime_mp.collector import Collector
from klime_mp.demo import (
    HOST,
    LoadResult,
    ServerProcess,
    Tally,
    drive,
    example_dir,
    gunicorn_argv,
    gunicorn_settings,
    server_env,
    tally,
    uwsgi_argv,
)

APPS = Path(__file__).resolve().parent / "apps"  # small apps for hosts the example lacks
REQUESTS = 60  # per case: enough to reach every worker, few enough for a 2-core CI box

# Short graceful timeouts keep a hung stop from eating the test's time budget.
GUNICORN_FAST = ("--graceful-timeout", "10", "--timeout", "20")


class Servers:
    """Starts servers against one collector and kills all of them at the end."""

    def __init__(self, tmp_path: Path, collector: Collector) -> None:
        self.tmp_path = tmp_path
        self.collector = collector
        self._started: list[ServerProcess] = []

    def gunicorn(self, *options: str, workers: int = 1, app: str = "app:app") -> ServerProcess:
        return self._start(
            lambda port: gunicorn_argv(port, workers, *GUNICORN_FAST, *options, app=app)
        )

    def gunicorn_with_config(self, config: Path, *options: str) -> ServerProcess:
        """Gunicorn reading a user's config file (workers and all) instead of ours."""
        return self._start(
            lambda port: gunicorn_argv(port, None, *GUNICORN_FAST, *options, config=str(config))
        )

    def bare_gunicorn(
        self,
        *options: str,
        workers: int = 2,
        app: str = "app:app",
        chdir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        """Gunicorn without klime_mp's hooks: what a user who only calls configure() runs."""
        return self._start(
            lambda port: bare_gunicorn_argv(port, workers, *options, app=app, chdir=chdir),
            env=env,
        )

    def uvicorn(
        self,
        *options: str,
        workers: int = 2,
        app_dir: Path = APPS,
        app: str = "asgi_app:app",
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        """``uvicorn --workers N`` serving ``app`` from ``app_dir`` (tests/apps/)."""
        return self._start(
            lambda port: uvicorn_argv(port, workers, *options, app_dir=app_dir, app=app),
            env=env,
        )

    def hypercorn(self, workers: int, env: dict[str, str] | None = None) -> ServerProcess:
        """``hypercorn --workers N`` serving tests/apps/asgi_app.py."""
        argv = [sys.executable, "-m", "hypercorn", "--workers", str(workers), "asgi_app:app"]
        return self._start(
            lambda port: [*argv[:3], "--bind", f"{HOST}:{port}", *argv[3:]],
            env={"PYTHONPATH": str(APPS), **(env or {})},
        )

    def uwsgi(
        self,
        *options: str,
        workers: int = 4,
        ini: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        fifo = self.tmp_path / f"uwsgi-{len(self._started)}.fifo"
        return self._start(
            lambda port: uwsgi_argv(port, workers, fifo, *options, ini=ini), fifo, env=env
        )

    def _start(
        self,
        argv: Callable[[int], list[str]],
        fifo: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        log = self.tmp_path / f"server-{len(self._started)}.log"
        full_env = {**server_env(self.collector.url), **(env or {})}
        server = ServerProcess(argv, full_env, log, fifo)
        self._started.append(server)
        return server.start()

    def close(self) -> None:
        for server in self._started:
            server.kill()


def bare_gunicorn_argv(
    port: int, workers: int, *options: str, app: str, chdir: Path | None = None
) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{HOST}:{port}"]
    argv += ["--workers", str(workers), "--chdir", str(chdir or example_dir()), *GUNICORN_FAST]
    return [*argv, *no_control_socket(), *options, app]


def no_control_socket() -> list[str]:
    """Gunicorn's control socket off, where the installed Gunicorn has one (24 and
    later; Python 3.9 gets 23): its default path is shared, so parallel runs clash."""
    return ["--no-control-socket"] if "control_socket_disable" in gunicorn_settings() else []


def uvicorn_argv(
    port: int, workers: int, *options: str, app_dir: Path = APPS, app: str = "asgi_app:app"
) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(workers), "--app-dir", str(app_dir), "--no-access-log"]
    return [*argv, *options, app]


@contextmanager
def running_servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    servers = Servers(tmp_path, collector)
    try:
        yield servers
    finally:
        servers.close()


def run_load(
    server: ServerProcess,
    total: int = REQUESTS,
    at: dict[int, Callable[[], None]] | None = None,
    concurrency: int = 4,
) -> LoadResult:
    """Drive ``total`` requests; ``at[n]`` runs (once) when the n-th answer is in.

    The load pauses while an action runs (each thread stops after its current
    request), so an action can wait for, say, a reload to finish mid-load."""
    pending = dict(at or {})
    gate = threading.Lock()

    def on_progress(done: int) -> None:
        with gate:
            action = pending.pop(done, None)
            if action is not None:
                action()

    return drive(server.url, total, concurrency, on_progress)


def wait_until_serving(server: ServerProcess, count: int, timeout: float = 30.0) -> set[int]:
    """Wait until ``count`` different workers have answered a request. A worker that
    exists may still be booting: Gunicorn's worker sets its own signal handlers only
    then, and a SIGTERM before that is lost on it (it runs on until the SIGKILL at the
    graceful timeout, and no worker_exit runs)."""

    def answered_by(_: int) -> int:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
            return int(response.headers["X-Worker-Pid"])

    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    with ThreadPoolExecutor(4) as pool:
        while len(pids) < count:
            assert time.monotonic() < deadline, f"only {pids} answered:\n{server.log_tail()}"
            pids.update(pool.map(answered_by, range(8)))
    return pids


def wait_for_log(server: ServerProcess, text: str, count: int, timeout: float = 20.0) -> None:
    """Wait until ``text`` appears ``count`` times in the server's log."""
    deadline = time.monotonic() + timeout
    while server.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {count} x {text!r} in:\n{server.log_tail()}"
        time.sleep(0.05)


def stop_and_count(server: ServerProcess, collector: Collector, load: LoadResult) -> Tally:
    try:
        status = server.stop()
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop in time; its log ends with:\n{server.log_tail(60)}")
    assert status == 0, f"server exited with {status}:\n{server.log_tail()}"
    return tally(collector, load.events_expected)


def assert_exactly_once(load: LoadResult, got: Tally, *, allow_refused: bool = False) -> None:
    """Every answered request's events arrived once; none twice; none extra."""
    if allow_refused:  # a stopping server refuses connections; it must not fail requests
        assert not [error for error in load.errors if error.startswith("HTTP")], load.errors
    else:
        assert load.failed == 0, load.errors[:5]
    assert load.ok > 0
    print(f"delivered {got.stored}/{load.events_expected}, {got.duplicates} duplicates")
    assert got.duplicates == 0
    # One track event per request, tagged with the PID of the worker that answered it:
    # which worker's events are missing, when some are.
    by_worker = f"track events per worker {dict(got.track_by_pid)}, requests per worker"
    assert got.stored == load.events_expected, f"{by_worker} {dict(load.requests_by_pid)}"
    assert got.track_by_pid == load.requests_by_pid


def assert_each_request_in_order(collector: Collector) -> None:
    """Each request's two events (identify then track, group then track) were stored in
    the order its handler tracked them: one greenlet or thread's events never swap."""
    position: dict[tuple[str, str], int] = {}
    for index, event in enumerate(collector.events()):
        kind = event["type"] if event["type"] != "track" else event["event"]
        key = event.get("userId") or ""
        if kind in ("group", "Joined Organization"):
            key = f"{event.get('userId')}/{event.get('groupId')}"
        position.setdefault((kind, key), index)
    for (kind, key), index in position.items():
        first = {"Signed In": "identify", "Joined Organization": "group"}.get(kind)
        if first is not None:
            assert position[(first, key)] < index, f"{kind} of {key} stored before its {first}"
