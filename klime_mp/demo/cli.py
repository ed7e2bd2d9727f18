"""The ``klime-mp demo`` command: its options, and one run per ``--server``: a fresh
local collector, the server, the load, a graceful stop, the report."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from klime_mp.collector import Collector

from . import launchers
from .load import LoadResult, Progress, drive
from .report import Outcome, outcome_of, report, summary, tally
from .server import HOST, WRITE_KEY, DemoError, server_env, wait_for_workers

MAX_REQUESTS = 100_000
DESCRIPTION = """\
Start a local collector (loopback, a free port, a temporary SQLite file), serve an
instrumented example app under a real server with several workers, send it a session
mix of requests (sign in, join an organisation, create reports), stop the server
gracefully, and report the events delivered, lost and duplicated, per worker.

Servers: gunicorn (the default: 4 forked sync workers, --preload), uwsgi (master and
forked workers; needs uWSGI), uvicorn (--workers N, the app's ASGI version; needs
uvicorn), celery (a prefork worker recycled every 10 tasks, Redis as broker, behind
a small HTTP front; needs redis-server and celery[redis]).

Exit status: 0 when every event arrived exactly once, 1 when an event was lost or
duplicated or a request failed, 2 when the demo could not run (a server missing)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        action="append",
        choices=launchers.names(),
        metavar="{" + ",".join(launchers.names()) + "}",
        help="the server to run; repeat it to run several in turn (default: gunicorn)",
    )
    parser.add_argument(
        "--uwsgi",
        action="append_const",
        const="uwsgi",
        dest="server",
        help="the same as --server uwsgi",
    )
    parser.add_argument("--workers", type=_positive, default=4, help="server workers (4)")
    parser.add_argument(
        "--requests",
        type=_request_count,
        default=200,
        help=f"requests to send to each server (200, max {MAX_REQUESTS})",
    )
    parser.add_argument("--concurrency", type=_positive, default=8, help="client threads (8)")
    parser.add_argument(
        "--no-kill",
        dest="kill",
        action="store_false",
        help="do not kill -9 a worker half-way (by default one worker is SIGKILLed with "
        "events queued, and the spool hands them to its siblings)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the (last) collector running afterwards, to browse; Ctrl-C stops it",
    )


def run(args: argparse.Namespace) -> int:
    names: list[str] = args.server or ["gunicorn"]
    try:
        chosen = [(name, launchers.load(name)) for name in dict.fromkeys(names)]
        for _, launcher in chosen:
            launcher.check()  # fail before anything starts if a server is missing
        with tempfile.TemporaryDirectory(prefix="klime-demo-") as tmp:
            outcomes = []
            for number, (name, launcher) in enumerate(chosen, 1):
                keep = args.keep and number == len(chosen)
                workdir = Path(tmp, name)
                workdir.mkdir()
                outcomes.append(_run_one(args, name, launcher, workdir, keep))
    except DemoError as exc:
        print(f"klime-mp demo: {exc}", file=sys.stderr)
        return 2
    if len(outcomes) > 1:
        summary(outcomes, sys.stdout)
    return 0 if all(outcome.ok for outcome in outcomes) else 1


def _run_one(
    args: argparse.Namespace,
    name: str,
    launcher: launchers.Launcher,
    workdir: Path,
    keep: bool,
) -> Outcome:
    total = args.requests
    with Collector(HOST, 0, workdir / "events.sqlite3", [WRITE_KEY]) as collector:
        env = server_env(collector.url, workdir / "spool")
        server = launcher.server(args.workers, workdir, env)
        print(
            f"klime-mp demo: collector at {collector.url}, {args.workers} {launcher.title} workers"
        )
        started = time.monotonic()
        try:
            server.start()
            workers = server.wait_for_workers(args.workers)
            print(f"  serving the example app at {server.url}; sending {total} requests")
            progress = Progress(total)
            killed = None
            if args.kill and total >= 2:
                first = drive(server.url, total // 2, args.concurrency, progress)
                killed = _kill_a_worker(first, server.worker_pids())
                if killed is not None:  # its replacement serves the second half too
                    workers |= wait_for_workers(
                        lambda: server.worker_pids() - {killed}, args.workers
                    )
                rest = drive(
                    server.url,
                    total - total // 2,
                    args.concurrency,
                    lambda done: progress(total // 2 + done),
                )
                load = first.combined(rest)
            else:
                load = drive(server.url, total, args.concurrency, progress)
            workers |= server.worker_pids()  # a worker replaced meanwhile is listed too
            status = server.stop()
        finally:
            server.kill()
        if status != 0:
            print(f"  warning: the server exited with status {status}", file=sys.stderr)
        got = tally(collector, load.events_expected)
        report(load, got, time.monotonic() - started, sys.stdout, workers, name, killed)
        if keep:
            _serve_until_interrupted(collector)
    return outcome_of(name, load, got, killed)


def _kill_a_worker(load: LoadResult, live: set[int]) -> int | None:
    """SIGKILL the busiest worker still alive, as the OOM killer would: what it had
    queued and not sent is on disk, and a sibling (or its replacement) sends it.

    Only among ``live`` workers: a server that recycles its workers (Celery's
    ``--max-tasks-per-child``) may have replaced the busiest one already."""
    served = {pid: count for pid, count in load.requests_by_pid.items() if pid in live}
    if not served:
        print("  no worker that served a request is still alive: nothing to kill -9")
        return None
    victim = max(served, key=served.__getitem__)
    try:
        os.kill(victim, signal.SIGKILL)
    except OSError:  # it left between the look and the kill
        print(f"  worker {victim} left before the kill -9")
        return None
    print(
        f"  kill -9 worker {victim} after {load.ok} requests: its queued events are in the "
        "spool, and a sibling sends them"
    )
    return victim


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
