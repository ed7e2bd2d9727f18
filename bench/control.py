"""Starting and steering the sink, a port where nothing answers, and polling.

Used by the orchestrator and by the workloads (which wait on the sink for delivery).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.load(reply)


def wait_until(done: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    """True once ``done()`` is; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def settle(read: Callable[[], T], key: Callable[[T], Any], quiet: float, timeout: float) -> T:
    """Poll ``read()`` until ``key`` of it has not changed for ``quiet`` seconds (or
    ``timeout``); the last reading."""
    deadline = time.monotonic() + timeout
    last = read()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if key(now) != key(last):
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            break
    return last


class SinkClient:
    """The sink's control port (its requests are not counted)."""

    def __init__(self, control_url: str) -> None:
        self.control_url = control_url

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = get_json(f"{self.control_url}/stats")
        return result

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.control_url}/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()

    def markers(self) -> dict[str, int]:
        result: dict[str, int] = get_json(f"{self.control_url}/markers")
        return result

    def eids(self) -> dict[str, int]:
        result: dict[str, int] = get_json(f"{self.control_url}/eids")
        return result

    def wait_events(self, count: int, timeout: float, poll: float = 0.01) -> bool:
        """True once the sink has seen ``count`` events; False after ``timeout``."""
        return wait_until(lambda: self.stats()["events"] >= count, timeout, poll)

    def wait_quiet(self, quiet: float, timeout: float) -> dict[str, Any]:
        """Wait until no event arrived for ``quiet`` seconds (or ``timeout``)."""
        return settle(self.stats, lambda s: (s["events"], s["requests"]), quiet, timeout)


class SinkProcess(SinkClient):
    """``python -m bench.sink`` in its own process; stops when we close its stdin."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sink"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        try:
            urls = json.loads(line)
        except ValueError:
            self.stop()
            raise RuntimeError(f"the sink did not start: {line!r}") from None
        self.url: str = urls["data"]
        super().__init__(urls["control"])

    def stop(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class RefusedPort:
    """A loopback port that refuses connections: bound, never listening, so no other
    process can take it while the benchmark relies on it being down."""

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
