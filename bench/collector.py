"""The receiver of every benchmark's events: klime_mp's collector in a process of its own
(its CPU and GIL are not the client's), and a port where nothing answers."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from typing import Any, Callable
from urllib.parse import urlsplit

# Sink mode, or with a database the validating and storing collector. Serves until we
# close its stdin, so it never outlives us.
SERVE = (
    "import sys\n"
    "from klime_mp.collector import Collector\n"
    "db = sys.argv[1:]\n"
    "print((Collector(db=db[0]) if db else Collector(sink=True)).start().url, flush=True)\n"
    "sys.stdin.read()\n"
)


def connection(url: str, timeout: float = 10) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)


def wait_until(done: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    """True once ``done()`` is; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def reap(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait for ``proc`` to exit, killing it after ``timeout`` seconds."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SinkStats:
    """The sink's counters over one kept-alive connection (the figures count no other)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = connection(url)

    def stats(self) -> dict[str, Any]:
        """requests, connections and received (events) since the collector started."""
        self._conn.request("GET", "/v1/stats")
        stats: dict[str, Any] = json.loads(self._conn.getresponse().read())
        return stats

    def wait_received(self, count: int, timeout: float, poll: float = 0.002) -> int | None:
        """``time.monotonic_ns()`` when ``count`` events were counted; None on timeout."""
        counted = wait_until(lambda: self.stats()["received"] >= count, timeout, poll)
        return time.monotonic_ns() if counted else None


class Sink(SinkStats):
    """``Collector(sink=True)`` in a subprocess of its own; ``Collector(db=db)`` with a db."""

    def __init__(self, db: str | None = None) -> None:
        command = [sys.executable, "-c", SERVE, *([db] if db else [])]
        self._proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        url = self._proc.stdout.readline().strip()
        if not url.startswith("http://"):
            reap(self._proc, 0)
            raise RuntimeError(f"the collector did not start: {url!r}")
        super().__init__(url)

    def stop(self) -> None:
        self._conn.close()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        reap(self._proc, 5)


class RefusedPort:
    """A loopback port bound, never listening: refused, and no other process takes it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._sock.close()


def free_port() -> int:
    refused = RefusedPort()  # bound, then released: a port no one held a moment ago
    refused.close()
    return refused.port
