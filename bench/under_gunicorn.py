"""Gunicorn runs: CPU per event (part 0), request rate and latency per SDK (part 3),
and --preload (part 4)."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.control import ROOT, SinkClient, SinkProcess, free_port, wait_until
from bench.loadgen import run_python
from bench.plan import Plan
from bench.sdks import BASELINES

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0
DELIVERY_TIMEOUT_S = 30.0


class Gunicorn:
    """``gunicorn bench.wsgi_app:app`` with the SDK picked by environment variables."""

    def __init__(
        self,
        sdk: str,
        url: str,
        workers: int,
        preload: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115  # lives as long as the server
            prefix="bench-gunicorn-", suffix=".log"
        )
        command = [
            sys.executable, "-m", "gunicorn",
            "--workers", str(workers),
            "--bind", f"127.0.0.1:{self.port}",
            "--error-logfile", self._log.name,
            "--graceful-timeout", "30",
            "--backlog", "2048",
        ]  # fmt: skip
        if preload:
            command.append("--preload")
        if sdk == "klime_mp" and importlib.util.find_spec("klime_mp.gunicorn_conf"):
            # klime_mp's documented deployment: its hooks flush each worker at exit.
            command += ["-c", "python:klime_mp.gunicorn_conf"]
        command.append("bench.wsgi_app:app")
        environment = {**os.environ, "BENCH_SDK": sdk, "BENCH_URL": url, **(env or {})}
        self._proc = subprocess.Popen(command, cwd=ROOT, env=environment)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited at start:\n{self.log()}")
            try:
                if get(self.url, "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not answer in {READY_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> float:
        """Graceful stop (SIGTERM, as a deploy does); returns how long it took."""
        started = time.monotonic()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        return time.monotonic() - started

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-4000:]


def get(base: str, path: str) -> tuple[int, bytes]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


@contextlib.contextmanager
def running(names: list[str], sink_url: str, workers: int) -> Iterator[list[Gunicorn]]:
    """One gunicorn per app (``none``: no SDK), all ready, all stopped afterwards."""
    servers: list[Gunicorn] = []
    try:
        servers.extend(Gunicorn(name, sink_url, workers) for name in names)
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def cpu_run(names: list[str], sink: SinkProcess, plan: Plan) -> dict[str, dict[str, Any]]:
    """Part 0: each app's worker CPU per request over ``plan.cpu_requests``.

    One sync worker per app (``-w 1``, so every request lands in the process measured).
    The worker's process CPU time (all its threads: the request, the ``track()`` call
    and the SDK's sender) is read through ``GET /cpu`` before and after the load, and
    the read after waits until the sink has every event the load tracked, so the
    sending is paid for inside the window. All apps run at once and take the load in
    turns (``plan.slices`` slices each), so a burst of noise lands on every app alike.
    Every SDK runs as an operator would run it: its own batch size and flush interval."""
    with running(names, sink.url, 1) as servers:
        targets = [f"{server.url}/" for server in servers]
        run_python(targets, plan.cpu_warmup, plan.cpu_concurrency, 1)
        sink.wait_quiet(0.6, 10.0)  # the warm-up's events are out of the window
        sink.reset()
        before = [int(get(server.url, "/cpu")[1]) for server in servers]
        loads = run_python(targets, plan.cpu_requests, plan.cpu_concurrency, plan.slices)
        served = [load["requests"] - load["errors"] for load in loads]
        tracked = sum(n for name, n in zip(names, served) if name not in BASELINES)
        sink.wait_events(tracked, DELIVERY_TIMEOUT_S, poll=0.05)
        after = [int(get(server.url, "/cpu")[1]) for server in servers]
        delivered = sink.stats()["events"]
    return {
        name: {
            "requests": n,
            "cpu_us_per_request": (end - start) / 1000 / max(n, 1),
            "all_delivered": delivered >= tracked,
        }
        for name, n, start, end in zip(names, served, before, after)
    }


def serve_load(names: list[str], sink_url: str, plan: Plan) -> dict[str, dict[str, Any]]:
    """Part 3: one gunicorn per SDK (and one without), all running, loaded in turn.

    Only one app is under load at any moment; the others sit idle (their SDK threads
    asleep); the apps take turns in short slices (see ``bench.loadgen``)."""
    with running(names, sink_url, plan.gunicorn_workers) as servers:
        targets = [f"{server.url}/" for server in servers]
        run_python(targets, plan.warmup_requests, plan.concurrency, 1)
        loads = run_python(targets, plan.requests, plan.concurrency, plan.slices)
    keys = ("rps", "p50_ms", "p99_ms", "requests", "errors")
    return {name: {key: load[key] for key in keys} for name, load in zip(names, loads)}


def preload_fork(sdk: str, url: str, control: str | None, plan: Plan) -> dict[str, Any]:
    """Part 4, gunicorn --preload: the master tracks events before forking its workers;
    each request then tracks one. The first requests carry markers and, as the fork
    children do, the run waits up to ``plan.wait_s`` for them to arrive before sending
    the rest and stopping the server. Returns what the run should have delivered."""
    env = {"BENCH_PARENT_EVENTS": str(plan.parent_events), "BENCH_FLUSH_S": str(plan.fork_flush_s)}
    server = Gunicorn(sdk, url, plan.fork_workers, preload=True, env=env)
    try:
        server.wait_ready()
        sink = SinkClient(control) if control else None  # None: nothing to wait on
        starts: dict[str, int] = {}
        expected = [f"p-{i}" for i in range(plan.parent_events)]
        for k in range(plan.preload_requests):
            eid = f"r{k}-0"
            marker = f"&marker=r{k}" if k < plan.fork_workers else ""
            if marker:
                starts[f"r{k}"] = time.monotonic_ns()
            if get(server.url, f"/track?eid={eid}{marker}")[0] == 200:
                expected.append(eid)
            if sink is not None and k == plan.fork_workers - 1:
                wait_until(lambda: starts.keys() <= sink.markers().keys(), plan.wait_s, poll=0.02)
    finally:
        stop_s = server.stop()
    return {"starts_ns": starts, "expected": expected, "stop_s": stop_s}
