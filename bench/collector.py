"""The receiver of every SDK's events: klime_mp's collector in sink mode, in a process
of its own (its CPU and GIL are not the client's), and a port where nothing answers."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from typing import Any, Callable

# Sink mode: any path and key (Segment's, PostHog's) answered 200 before decoding; the
# events only counted. Serves until we close its stdin, so it never outlives us.
SERVE = (
    "import sys\n"
    "from klime_mp.collector import Collector\n"
    "print(Collector(sink=True).start().url, flush=True)\n"
    "sys.stdin.read()\n"
)


def wait_until(done: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    """True once ``done()`` is; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


class SinkStats:
    """The sink's counters, read over one kept-alive connection: polling opens no
    connection that the figures would count."""

    def __init__(self, url: str) -> None:
        self.url = url
        host, port = url.removeprefix("http://").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def stats(self) -> dict[str, Any]:
        """requests, connections and received (events) since the collector started."""
        self._conn.request("GET", "/v1/stats")
        stats: dict[str, Any] = json.loads(self._conn.getresponse().read())
        return stats

    def wait_received(self, count: int, timeout: float, poll: float = 0.002) -> int | None:
        """``time.monotonic_ns()`` when ``count`` events were counted; None on timeout."""
        deadline = time.monotonic() + timeout
        while self.stats()["received"] < count:
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)
        return time.monotonic_ns()


class Sink(SinkStats):
    """``Collector(sink=True)`` in a subprocess of its own."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        url = self._proc.stdout.readline().strip()
        if not url.startswith("http://"):
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"the collector did not start: {url!r}")
        super().__init__(url)

    def stop(self) -> None:
        self._conn.close()
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class RefusedPort:
    """A loopback port bound but never listening: connections are refused, and no other
    process can take the port while the benchmark relies on it being down."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
