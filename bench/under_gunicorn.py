"""Gunicorn runs: request rate and latency per SDK (part 3), and --preload (part 4)."""

from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.control import ROOT, free_port, get_json
from bench.loadgen import Load, run_python

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 40.0


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

    def __enter__(self) -> Gunicorn:
        self.wait_ready()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited at start:\n{self.log()}")
            try:
                if get(self.url, "/health") == 200:
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


def get(base: str, path: str) -> int:
    parts = base.split(":")
    conn = http.client.HTTPConnection("127.0.0.1", int(parts[-1]), timeout=10)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def _wait_for_markers(control: str, markers: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        arrived = get_json(f"{control}/markers")
        if all(marker in arrived for marker in markers):
            return
        time.sleep(0.02)


def serve_load(names: list[str], sink_url: str, plan: Any) -> dict[str, dict[str, Any]]:
    """Part 3: one gunicorn per SDK (and one without), all running, loaded in turn.

    Only one app is under load at any moment; the others sit idle (their SDK threads
    asleep); the apps take turns in short slices (see ``bench.loadgen``)."""
    servers: list[Gunicorn] = []
    try:
        servers.extend(Gunicorn(name, sink_url, plan.gunicorn_workers) for name in names)
        for server in servers:
            server.wait_ready()
        targets = [f"{server.url}/" for server in servers]
        run_python(targets, plan.warmup_requests, plan.concurrency, 1)
        loads = run_python(targets, plan.requests, plan.concurrency, plan.slices)
    finally:
        for server in servers:
            server.stop()
    return {name: _load_result(load) for name, load in zip(names, loads)}


def _load_result(load: Load) -> dict[str, Any]:
    return {
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "requests": load.requests,
        "errors": load.errors,
    }


def preload_fork(sdk: str, url: str, control: str | None, plan: Any) -> dict[str, Any]:
    """Part 4, gunicorn --preload: the master tracks events before forking its workers;
    each request then tracks one. The first requests carry markers and, as the fork
    children do, the run waits up to ``plan.wait_s`` for them to arrive before sending
    the rest and stopping the server. Returns what the run should have delivered."""
    env = {"BENCH_PARENT_EVENTS": str(plan.parent_events), "BENCH_FLUSH_S": str(plan.fork_flush_s)}
    server = Gunicorn(sdk, url, plan.fork_workers, preload=True, env=env)
    try:
        server.wait_ready()
        starts: dict[str, int] = {}
        expected = [f"p-{i}" for i in range(plan.parent_events)]
        for k in range(plan.preload_requests):
            eid = f"r{k}-0"
            marker = f"&marker=r{k}" if k < plan.fork_workers else ""
            if marker:
                starts[f"r{k}"] = time.monotonic_ns()
            if get(server.url, f"/track?eid={eid}{marker}") == 200:
                expected.append(eid)
            if control and k == plan.fork_workers - 1:
                _wait_for_markers(control, list(starts), plan.wait_s)
    finally:
        stop_s = server.stop()
    return {"starts_ns": starts, "expected": expected, "stop_s": stop_s}
