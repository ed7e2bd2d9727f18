"""``klime-mp demo``: watch every tracked event arrive exactly once, on your machine.

Starts the local collector (loopback, a free port, a temporary SQLite file), serves the
example app (examples/gunicorn_app) under real Gunicorn workers with ``--preload`` and
the hooks of ``klime_mp.gunicorn_conf`` (or under uWSGI with ``--uwsgi``), sends it N
requests, stops the server gracefully, and reports what reached the collector. Exits 1
when an event was lost or duplicated or a request failed, 2 when the demo could not run.

Its parts (``ServerProcess``, ``drive``, ``tally``) also run the server tests.
Gunicorn is imported only when the demo runs, so this module imports without it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import importlib
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from klime_mp.collector import Collector

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "gunicorn_app"
WRITE_KEY = "demo-write-key"
HOST = "127.0.0.1"
MAX_REQUESTS = 100_000
START_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0  # above gunicorn's default graceful_timeout (30 s)
REQUEST_TIMEOUT_S = 30.0
FIFO_RETRY_S = 5.0


class DemoError(Exception):
    """The demo could not run (missing server, example app, or a server that died)."""


# -- servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def example_dir() -> Path:
    if not (EXAMPLE_DIR / "app.py").is_file():
        raise DemoError(
            f"the example app is not at {EXAMPLE_DIR}: run the demo from a source "
            "checkout (git clone ... && pip install -e .)"
        )
    return EXAMPLE_DIR


def gunicorn_argv(
    port: int,
    workers: int | None,
    *options: str,
    app: str = "app:app",
    config: str = "python:klime_mp.gunicorn_conf",
) -> list[str]:
    """Gunicorn serving the example app through klime_mp's hooks (``-c python:...``);
    ``workers=None`` leaves the count to the config file."""
    settings = gunicorn_settings()
    argv = [sys.executable, "-m", "gunicorn", "-c", config, "--bind", f"{HOST}:{port}"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv += ["--chdir", str(example_dir())]
    if "control_socket_disable" in settings:
        argv.append("--no-control-socket")  # one shared default path: parallel runs clash
    return [*argv, *options, app]


def gunicorn_settings() -> set[str]:
    """The setting names of the installed Gunicorn (imported here, not at import)."""
    try:
        config = importlib.import_module("gunicorn.config")  # by name: it ships no types
    except ImportError:
        raise DemoError("the demo needs Gunicorn: pip install gunicorn") from None
    return {setting.name for setting in config.KNOWN_SETTINGS}


def uwsgi_binary() -> str:
    """The uWSGI built for this Python (pip installs it next to the interpreter)."""
    beside = Path(sys.executable).with_name("uwsgi")
    found = str(beside) if beside.is_file() else shutil.which("uwsgi")
    if found is None:
        raise DemoError("--uwsgi needs uWSGI for this Python: pip install uwsgi")
    return found


def uwsgi_argv(
    port: int, workers: int, fifo: Path, *options: str, ini: Path | None = None
) -> list[str]:
    """uWSGI with the example's ini (or ``ini``); ``fifo`` is its master FIFO, through
    which ``q`` stops it gracefully."""
    ini = ini if ini is not None else example_dir() / "uwsgi.ini"
    argv = [uwsgi_binary(), "--ini", str(ini)]
    argv += ["--http-socket", f"{HOST}:{port}", "--processes", str(workers)]
    # A worker being respawned when "q" arrives misses it, and the master then waits
    # worker-reload-mercy for it (60 s by default): longer than any stop we wait for.
    mercy = ["--worker-reload-mercy", "15"]
    return [*argv, "--master-fifo", str(fifo), "--disable-logging", *mercy, *options]


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
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop_requested = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self) -> ServerProcess:
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            self._stop_requested = False
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    self._argv_for(self.port),
                    env=self._env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
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
        return self._proc is not None and self._proc.poll() is None

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
        assert self._proc is not None, "not started"
        self.request_stop()
        try:
            return self._proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group (workers outlive a dead master); idempotent."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def server_env(endpoint: str) -> dict[str, str]:
    env = dict(os.environ, KLIME_WRITE_KEY=WRITE_KEY, KLIME_ENDPOINT=endpoint)
    env.update(PYTHONUNBUFFERED="1", NO_PROXY=f"{HOST},localhost")
    return env


# -- load -----------------------------------------------------------------------------


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


# -- what arrived ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    stored: int  # unique events (by messageId) at the collector
    duplicates: int  # receipts of a messageId already stored
    connections: int  # TCP connections the collector accepted
    batches: int  # POST /v1/batch requests
    track_by_pid: Counter[int]  # track events by their worker_pid property


def tally(collector: Collector, expected: int, settle: float = 5.0) -> Tally:
    """Count what reached ``collector``, waiting up to ``settle`` s for ``expected``."""
    collector.wait_for(expected, settle)
    stats = collector.stats()
    by_pid: Counter[int] = Counter()
    for event in collector.events():
        if event.get("type") == "track":
            by_pid[int(event.get("properties", {}).get("worker_pid", 0))] += 1
    return Tally(stats.stored, stats.duplicates, stats.connections, stats.requests, by_pid)


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def report(load: LoadResult, got: Tally, elapsed: float, out: TextIO) -> bool:
    """Print the report; True when every event arrived exactly once."""
    ok = got.stored == load.events_expected and got.duplicates == 0 and load.failed == 0
    p50, p99 = (1000 * percentile(load.latencies, p) for p in (0.5, 0.99))
    rows = [
        ("requests sent", f"{load.sent} ({load.ok} ok, {load.failed} failed)"),
        ("events expected", str(load.events_expected)),
        ("events delivered", str(got.stored)),
        ("duplicates", str(got.duplicates)),
        ("TCP connections", f"{got.connections} (for {got.batches} batches)"),
        ("request latency", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"),
        ("elapsed", f"{elapsed:.1f} s"),
    ]
    for label, value in rows:
        print(f"  {label:<18}{value}", file=out)
    print("  per worker PID    requests  track events", file=out)
    for pid in sorted(set(load.requests_by_pid) | set(got.track_by_pid)):
        sent, seen = load.requests_by_pid[pid], got.track_by_pid[pid]
        mark = "" if sent == seen else "   <- mismatch"
        print(f"    {pid:<16}{sent:>8}  {seen:>12}{mark}", file=out)
    for error in sorted(set(load.errors))[:5]:
        print(f"  request error: {error}", file=out)
    verdict = "every tracked event arrived exactly once" if ok else "events were LOST or DUPLICATED"
    print(f"\n{'OK' if ok else 'FAIL'}: {verdict}.", file=out)
    return ok


# -- the command ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_positive, default=4, help="server workers (4)")
    parser.add_argument(
        "--requests",
        type=_request_count,
        default=200,
        help=f"requests to send (200, max {MAX_REQUESTS})",
    )
    parser.add_argument("--concurrency", type=_positive, default=8, help="client threads (8)")
    parser.add_argument(
        "--uwsgi", action="store_true", help="serve with uWSGI (examples/gunicorn_app/uwsgi.ini)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the collector running afterwards, to browse"
    )


def run(args: argparse.Namespace) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="klime-demo-") as tmp:
            return _run(args, Path(tmp))
    except DemoError as exc:
        print(f"klime-mp demo: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, tmp: Path) -> int:
    total = args.requests
    with Collector(HOST, 0, tmp / "events.sqlite3", [WRITE_KEY]) as collector:
        server = _server(args, tmp, collector.url)
        kind = "uWSGI" if args.uwsgi else "Gunicorn (--preload)"
        print(f"klime-mp demo: collector at {collector.url}, {args.workers} {kind} workers")
        started = time.monotonic()
        try:
            server.start()
            print(f"  serving the example app at {server.url}; sending {total} requests")
            load = drive(server.url, total, args.concurrency, Progress(total))
            status = server.stop()
        finally:
            server.kill()
        if status != 0:
            print(f"  warning: the server exited with status {status}", file=sys.stderr)
        got = tally(collector, load.events_expected)
        ok = report(load, got, time.monotonic() - started, sys.stdout)
        if args.keep:
            _serve_until_interrupted(collector)
    return 0 if ok else 1


def _server(args: argparse.Namespace, tmp: Path, endpoint: str) -> ServerProcess:
    env, log = server_env(endpoint), tmp / "server.log"
    if args.uwsgi:
        fifo = tmp / "uwsgi.fifo"
        return ServerProcess(lambda port: uwsgi_argv(port, args.workers, fifo), env, log, fifo)
    gunicorn_settings()  # fail before the banner if Gunicorn is missing
    return ServerProcess(lambda port: gunicorn_argv(port, args.workers, "--preload"), env, log)


def _serve_until_interrupted(collector: Collector) -> None:
    print(f"\ncollector still running: {collector.url}/v1/stats and {collector.url}/v1/events")
    print("press Ctrl-C to stop")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _request_count(text: str) -> int:
    value = _positive(text)
    if value > MAX_REQUESTS:
        raise argparse.ArgumentTypeError(f"at most {MAX_REQUESTS}, got {text}")
    return value
