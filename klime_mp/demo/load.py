"""The demo's load: a session mix of HTTP requests sent from a few threads, counting the
events each response says it queued (``X-Klime-Events``) and the worker that served it
(``X-Worker-Pid``), with a progress bar."""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

REQUEST_TIMEOUT_S = 30.0


def request(
    url: str, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT_S
) -> tuple[int, dict[str, str]]:
    """One request on a fresh connection (no proxies): status and headers."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Connection": "close"}
        connection.request(method, path, data, headers)
        reply = connection.getresponse()
        reply.read()
        return reply.status, {name.lower(): value for name, value in reply.getheaders()}
    finally:
        connection.close()


def planned_request(index: int, total: int) -> tuple[str, dict[str, str]]:
    """The index-th request of a session mix: each user signs in, joins an
    organisation, then creates reports (about ten requests per user)."""
    users = max(1, total // 10)
    user, step = index % users, index // users
    body = {"user_id": f"usr_{user}", "org_id": f"org_{user % 5}"}
    if step == 0:
        return "/login", {**body, "email": f"user{user}@example.com", "name": f"User {user}"}
    if step == 1:
        return f"/orgs/org_{user % 5}/members", {**body, "org_name": f"Org {user % 5}"}
    return "/reports", {**body, "report_type": ("revenue", "churn", "usage")[index % 3]}


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    events_expected: int = 0  # sum of X-Klime-Events over successful responses
    requests_by_pid: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: list[str] = field(default_factory=list)

    def combined(self, other: LoadResult) -> LoadResult:
        """This load followed by ``other``, as one."""
        return LoadResult(
            self.sent + other.sent,
            self.ok + other.ok,
            self.events_expected + other.events_expected,
            self.requests_by_pid + other.requests_by_pid,
            self.latencies + other.latencies,
            self.errors + other.errors,
        )

    @property
    def failed(self) -> int:
        return self.sent - self.ok


def drive(
    url: str,
    total: int,
    concurrency: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """Send ``total`` requests from ``concurrency`` threads; count what they queued."""
    result = LoadResult()
    lock = threading.Lock()
    indexes = itertools.count()

    def one(index: int) -> None:
        path, body = planned_request(index, total)
        started = time.perf_counter()
        try:
            status, headers = request(url, "POST", path, body)
        except (OSError, http.client.HTTPException) as exc:
            status, headers = 0, {"error": f"{type(exc).__name__}: {exc}"}
        elapsed = time.perf_counter() - started
        with lock:
            result.sent += 1
            if status == 200:
                result.ok += 1
                result.events_expected += int(headers["x-klime-events"])
                result.requests_by_pid[int(headers["x-worker-pid"])] += 1
                result.latencies.append(elapsed)
            else:
                result.errors.append(headers.get("error", f"HTTP {status}"))
            done = result.sent
        if on_progress is not None:
            on_progress(done)

    def loop() -> None:
        while (index := next(indexes)) < total:
            one(index)

    threads = [threading.Thread(target=loop, name=f"demo-load-{n}") for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line per
    tenth otherwise (CI logs)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self._total, self._width = total, width
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._shown = -1

    def __call__(self, done: int) -> None:
        step = done * (self._width if self._tty else 10) // self._total
        if step == self._shown and done != self._total:
            return
        self._shown = step
        filled = done * self._width // self._total
        bar = f"[{'#' * filled}{'.' * (self._width - filled)}] {done}/{self._total} requests"
        self._stream.write(f"\r  {bar}" if self._tty else f"  {bar}\n")
        if self._tty and done == self._total:
            self._stream.write("\n")
        self._stream.flush()
