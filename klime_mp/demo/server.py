"""A server under test in its own session: started on a free loopback port, stopped
gracefully (SIGTERM, or a uWSGI master-FIFO command), and SIGKILLed as a whole group
if anything is left. Server-agnostic: the launchers build its command line."""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Callable

from .load import request
from .session import SessionProcess, log_tail, read_log

HOST = "127.0.0.1"
WRITE_KEY = "demo-write-key"
START_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0  # above gunicorn's default graceful_timeout (30 s)
FIFO_RETRY_S = 5.0
WORKERS_TIMEOUT_S = 15.0


class DemoError(Exception):
    """The demo could not run (missing server, example app, or a server that died)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def server_env(endpoint: str, spool_dir: Path | None = None) -> dict[str, str]:
    """The environment of a served app: the example reads its key and endpoint here,
    and, with ``spool_dir``, turns the durable spool on (``KLIME_SPOOL_DIR``)."""
    env = dict(os.environ, KLIME_WRITE_KEY=WRITE_KEY, KLIME_ENDPOINT=endpoint)
    env.update(PYTHONUNBUFFERED="1", NO_PROXY=f"{HOST},localhost")
    env.pop("KLIME_SPOOL_DIR", None)
    if spool_dir is not None:
        env["KLIME_SPOOL_DIR"] = str(spool_dir)
    return env


def child_pids(parent: int) -> set[int]:
    """The live children of ``parent`` (the server's workers), read from /proc; empty
    where there is no /proc (the report then lists the workers that answered)."""
    found: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as status:
                    # "pid (comm) state ppid ...": comm may hold spaces, so split after ")"
                    fields = status.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the process left while we looked
            if int(fields[1]) == parent and fields[0] != b"Z":  # a zombie has left
                found.add(int(entry.name))
    return found


def wait_for_workers(
    worker_pids: Callable[[], set[int]], count: int, timeout: float = WORKERS_TIMEOUT_S
) -> set[int]:
    """The worker PIDs once ``count`` exist (or at ``timeout``). A master answers as
    soon as its first worker serves; the others are forked over the next moments, and a
    short load would otherwise finish before the last one exists."""
    deadline = time.monotonic() + timeout
    while (found := worker_pids()) and len(found) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return found


class ServerProcess:
    """A server in its own session (process group), so stopping it reaches every worker.

    ``argv_for`` builds the command for a port. ``fifo``: a uWSGI master FIFO, through
    which ``stop()`` asks for a graceful stop; without it ``stop()`` sends SIGTERM."""

    def __init__(
        self,
        argv_for: Callable[[int], list[str]],
        env: dict[str, str],
        log_path: Path,
        fifo: Path | None = None,
    ) -> None:
        self._argv_for = argv_for
        self._env = env
        self.log_path = log_path
        self.fifo = fifo
        self.port = 0
        self._session: SessionProcess | None = None
        self._stop_requested = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._session is not None, "not started"
        return self._session.pid

    def start(self) -> ServerProcess:
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            self._stop_requested = False
            self._session = SessionProcess(self._argv_for(self.port), self._env, self.log_path)
            if self._wait_ready():
                return self
            self.kill()
            if "in use" not in self.log():  # anything but a lost port race is final
                break
        raise DemoError(f"the server did not start; its log ends with:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running():
                return False
            with contextlib.suppress(OSError, http.client.HTTPException):
                answered = request(self.url, "GET", "/healthz", timeout=2.0)[0] == 200
                if answered and self._fifo_ready():
                    return True
            time.sleep(0.05)
        return False

    def running(self) -> bool:
        return self._session is not None and self._session.running()

    def worker_pids(self) -> set[int]:
        """The master's worker processes now (call it while the server runs)."""
        return child_pids(self.pid) if self.running() else set()

    def wait_for_workers(self, count: int, timeout: float = WORKERS_TIMEOUT_S) -> set[int]:
        return wait_for_workers(self.worker_pids, count, timeout)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the master only, as an operator would."""
        os.kill(self.pid, signum)

    def request_stop(self) -> None:
        """Ask for a graceful stop, once (uWSGI can hang on a second ``q``); no wait."""
        if self._stop_requested or not self.running():
            return
        self._stop_requested = True
        if self.fifo is None:
            self.signal(signal.SIGTERM)
        elif not self._write_fifo(b"q"):
            self.signal(signal.SIGINT)  # no FIFO to talk to: uWSGI's (brutal) stop

    def _write_fifo(self, command: bytes) -> bool:
        """Write to the uWSGI master FIFO without ever blocking. uWSGI recreates the FIFO
        after each writer leaves, so it can be briefly missing (ENOENT) or unread (ENXIO):
        retry for a while. A blocking open would hang forever once the master is gone."""
        assert self.fifo is not None
        deadline = time.monotonic() + FIFO_RETRY_S
        while self.running() and time.monotonic() < deadline:
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENXIO):
                    raise
                time.sleep(0.05)
                continue
            try:
                return os.write(fd, command) == len(command)
            finally:
                os.close(fd)
        return False

    def _fifo_ready(self) -> bool:
        """The master creates its FIFO after the workers start serving: wait for it, or
        a stop written too early goes to a plain file the master then replaces."""
        try:
            return self.fifo is None or stat.S_ISFIFO(os.stat(self.fifo).st_mode)
        except FileNotFoundError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Stop gracefully and wait; the master's exit status (workers flush first)."""
        assert self._session is not None, "not started"
        self.request_stop()
        try:
            return self._session.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group (workers outlive a dead master); idempotent."""
        if self._session is not None:
            self._session.kill()

    def log(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)
