"""A bounded, closed-loop HTTP load generator for loopback.

Python (the default, needs nothing installed): ``concurrency`` processes, each with one
request in flight at a time, send a fixed number of GETs and time each from connect to
the last byte of the response. Processes rather than threads, so the generator's own
GIL does not add to the latencies it reports. Gunicorn's sync worker closes the
connection after each response, so each request opens a new connection.

Several apps are measured *interleaved*: the requests for each are cut into slices,
and all processes move from one app's slice to the next together (a barrier), so a
burst of noise from elsewhere on a shared machine lands on every app alike instead of
on whichever one happened to be running. An app's requests/s is its requests over the
summed wall time of its slices.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import subprocess
import sys
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

from bench.stats import percentile

Load = dict[str, Any]  # requests, errors, seconds, rps, p50_ms, p99_ms: one app's


def _get(host: str, port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        conn.close()
    except OSError:
        return False
    return reply.status == 200


def _sender(
    index: int,
    urls: list[str],
    per_slice: list[int],
    slices: int,
    barrier: Any,
    results: Any,
) -> None:
    """One process: for each slice, for each app (order rotating), its share."""
    targets = [urlsplit(url) for url in urls]
    samples = [array("q") for _ in urls]
    errors = [0] * len(urls)
    walls = [0] * len(urls)
    for slice_no in range(slices):
        for step in range(len(urls)):
            app = (step + slice_no) % len(urls)
            target = targets[app]
            host, port = target.hostname or "127.0.0.1", target.port or 80
            barrier.wait()
            began = time.monotonic_ns()
            for _ in range(per_slice[app]):
                start = time.perf_counter_ns()
                if not _get(host, port, target.path or "/"):
                    errors[app] += 1
                samples[app].append(time.perf_counter_ns() - start)
            barrier.wait()  # the slice ends when the slowest process is done
            if index == 0:
                walls[app] += time.monotonic_ns() - began
    results.put((index, [s.tobytes() for s in samples], errors, walls))


def _generate(urls: list[str], requests: int, concurrency: int, slices: int) -> list[Load]:
    """In the ``python -m bench.loadgen`` process: fork the senders, gather results."""
    ctx = multiprocessing.get_context("fork")  # a fresh process without threads: safe
    results = ctx.Queue()
    barrier = ctx.Barrier(concurrency)
    per_slice = [max(requests // (slices * concurrency), 1)] * len(urls)
    procs = [
        ctx.Process(target=_sender, args=(k, urls, per_slice, slices, barrier, results))
        for k in range(concurrency)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    walls = next(outcome[3] for outcome in outcomes if outcome[0] == 0)
    loads = []
    for app in range(len(urls)):
        merged = array("q")
        for outcome in outcomes:
            merged.frombytes(outcome[1][app])
        ordered = sorted(merged)
        seconds = walls[app] / 1e9
        loads.append(
            {
                "requests": len(ordered),
                "errors": sum(outcome[2][app] for outcome in outcomes),
                "seconds": seconds,
                "rps": len(ordered) / seconds if seconds else 0.0,
                "p50_ms": percentile(ordered, 0.5) / 1e6,
                "p99_ms": percentile(ordered, 0.99) / 1e6,
            }
        )
    return loads


def run_python(urls: list[str], requests: int, concurrency: int, slices: int) -> list[Load]:
    """About ``requests`` requests to each of ``urls``, interleaved in ``slices``; the
    generator runs in its own process and forks its senders from there."""
    config = json.dumps([urls, requests, concurrency, slices])
    command = [sys.executable, "-m", "bench.loadgen", config]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-2000:]}")
    loads: list[Load] = json.loads(done.stdout.strip().splitlines()[-1])
    return loads


if __name__ == "__main__":
    loads = _generate(*json.loads(sys.argv[1]))
    print(json.dumps(loads))
