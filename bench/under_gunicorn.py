"""Every app under Gunicorn at once, loaded in turns (barrier-synchronised slices): CPU
per event and request latency; method in docs/performance.md (cpu, gunicorn)."""

from __future__ import annotations

import contextlib
import functools
import http.client
import importlib.util
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.collector import Sink, free_port, reap, wait_until
from bench.sdks import BASELINES
from bench.table import percentile

ROOT = Path(__file__).resolve().parent.parent
Figures = dict[str, dict[str, Any]]  # app -> figure -> value


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _start(app: str, url: str, workers: int, log: str) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    command += ["--error-logfile", log, "--backlog", "2048"]
    if app == "klime_mp" and importlib.util.find_spec("klime_mp.gunicorn_conf"):
        command += ["-c", "python:klime_mp.gunicorn_conf"]  # its documented deployment
    env = {**os.environ, "BENCH_SDK": app, "BENCH_URL": url}
    return port, subprocess.Popen([*command, "bench.wsgi_app:app"], cwd=ROOT, env=env)


def _up_or_gone(port: int, proc: subprocess.Popen[bytes]) -> bool:
    with contextlib.suppress(OSError):
        return get(port, "/health")[0] == 200
    return proc.poll() is not None


@contextlib.contextmanager
def serving(apps: list[str], url: str, workers: int) -> Iterator[list[int]]:
    """One gunicorn per app, all answering; each gets SIGTERM (as a deploy) at the end."""
    with tempfile.TemporaryDirectory(prefix="bench-gunicorn-") as logs:
        servers = [_start(app, url, workers, f"{logs}/{app}.log") for app in apps]
        try:
            for app, (port, proc) in zip(apps, servers):
                if not wait_until(functools.partial(_up_or_gone, port, proc), 30):
                    raise RuntimeError(f"gunicorn for {app} did not answer in 30 s")
                if proc.poll() is not None:
                    raise RuntimeError(Path(f"{logs}/{app}.log").read_text()[-2000:])
            yield [port for port, _ in servers]
        finally:
            for _, proc in servers:
                proc.send_signal(signal.SIGTERM)
            for _, proc in servers:
                reap(proc, 40)


def _sender(ports: list[int], per_slice: int, slices: int, barrier: Any, out: Any) -> None:
    """One load process: per slice, per app in rotating order, connect to last byte."""
    samples = [array("q") for _ in ports]
    walls = [0] * len(ports)
    for slice_no in range(slices):
        for step in range(len(ports)):
            app = (step + slice_no) % len(ports)
            barrier.wait()
            began = time.monotonic_ns()
            for _ in range(per_slice):
                start = time.perf_counter_ns()
                try:
                    ok = get(ports[app], "/")[0] == 200
                except OSError:
                    ok = False
                samples[app].append(time.perf_counter_ns() - start if ok else -1)
            barrier.wait()  # the slice ends when the slowest process is done
            walls[app] += time.monotonic_ns() - began
    out.put(([s.tobytes() for s in samples], walls))


def load(ports: list[int], requests: int, concurrency: int, slices: int) -> Figures:
    """About ``requests`` to each port from forked load processes (no GIL of ours shared)."""
    ctx = multiprocessing.get_context("fork")
    out, barrier = ctx.Queue(), ctx.Barrier(concurrency)
    per_slice = max(requests // (slices * concurrency), 1)
    args = (ports, per_slice, slices, barrier, out)
    procs = [ctx.Process(target=_sender, args=args) for _ in range(concurrency)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    figures = []
    for app in range(len(ports)):
        merged = array("q")
        for samples, _ in results:
            merged.frombytes(samples[app])
        times = sorted(t for t in merged if t >= 0)
        ms = [percentile(times, q) / 1e6 if times else None for q in (0.5, 0.99)]
        figure = {"requests": len(times), "errors": len(merged) - len(times)}
        figure["rps"] = len(times) / (results[0][1][app] / 1e9)
        figures.append({**figure, "p50_ms": ms[0], "p99_ms": ms[1]})
    return dict(zip(map(str, ports), figures))


def cpu(apps: list[str], sink: Sink, requests: int, slices: int) -> Figures:
    """CPU per event: worker CPU per request (``GET /cpu``), the no-SDK app's subtracted."""

    def tracked(figures: Figures) -> int:
        counts = [f["requests"] for f in figures.values()]
        return sum(n for app, n in zip(apps, counts) if app not in BASELINES)

    with serving(apps, sink.url, 1) as ports:
        expected = sink.stats()["received"] + tracked(load(ports, max(requests // 5, 20), 2, 1))
        sink.wait_received(expected, 30.0)  # the warm-up's events are out of the window
        before = [int(get(port, "/cpu")[1]) for port in ports]
        figures = load(ports, requests, 2, slices)
        delivered = sink.wait_received(expected + tracked(figures), 30.0) is not None
        after = [int(get(port, "/cpu")[1]) for port in ports]
    served = [f["requests"] for f in figures.values()]
    per_request = {
        app: (end - start) / 1000 / max(n, 1)
        for app, n, start, end in zip(apps, served, before, after)
    }
    return {
        app: {
            "us_per_event": us - per_request["none"],
            "us_per_request": us,
            "delivered": delivered,
        }
        for app, us in per_request.items()
    }


def latency(apps: list[str], sink: Sink, requests: int, slices: int, workers: int) -> Figures:
    """Request rate and latency, 4 load processes, medians against the baselines'."""
    with serving(apps, sink.url, workers) as ports:
        load(ports, max(requests // 8, 20), 4, 1)  # warm-up
        by_port = load(ports, requests, 4, slices)
    figures = {app: by_port[str(port)] for app, port in zip(apps, ports)}
    for f in figures.values():
        for base in BASELINES:
            f[f"p50_vs_{base}"] = f["p50_ms"] / figures[base]["p50_ms"]
    return figures
