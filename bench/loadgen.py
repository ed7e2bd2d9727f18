"""A bounded, closed-loop HTTP load generator for loopback (or Debian's wrk).

Python (the default, needs nothing installed): ``concurrency`` processes, each with
one request in flight at a time, send ``requests`` GETs in total and time each from
connect to the last byte of the response. Processes rather than threads, so the
generator's own GIL does not add to the latencies it reports. Gunicorn's sync worker
closes the connection after each response, so each request opens a new connection,
as a browser behind no proxy would.

wrk (``--loadgen wrk``): ``wrk -t2 -cCONCURRENCY -dSECONDS --latency``; it is bounded in
time, not in count, and reports its own percentiles.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from array import array
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from bench.stats import percentile


@dataclass(frozen=True)
class Load:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _worker(url: str, count: int, start_at: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    samples = array("q")
    errors = 0
    while time.monotonic() < start_at:  # all workers start together
        time.sleep(0.001)
    began = time.monotonic_ns()
    for _ in range(count):
        start = time.perf_counter_ns()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", path)
            reply = conn.getresponse()
            reply.read()
            conn.close()
            if reply.status != 200:
                errors += 1
        except OSError:
            errors += 1
        samples.append(time.perf_counter_ns() - start)
    results.put((began, time.monotonic_ns(), samples.tobytes(), errors))


def _generate(url: str, requests: int, concurrency: int) -> Load:
    """In the ``python -m bench.loadgen`` process: fork the senders, gather results."""
    ctx = multiprocessing.get_context("fork")  # a fresh process without threads: safe
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    start_at = time.monotonic() + 0.2
    share, extra = divmod(requests, concurrency)
    procs = [
        ctx.Process(target=_worker, args=(url, share + (k < extra), start_at, results))
        for k in range(concurrency)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    samples = array("q")
    for _, _, raw, _ in outcomes:
        samples.frombytes(raw)
    ordered = sorted(samples)
    began = min(outcome[0] for outcome in outcomes)
    ended = max(outcome[1] for outcome in outcomes)
    return Load(
        requests=len(ordered),
        errors=sum(outcome[3] for outcome in outcomes),
        seconds=(ended - began) / 1e9,
        p50_ms=percentile(ordered, 0.5) / 1e6,
        p99_ms=percentile(ordered, 0.99) / 1e6,
    )


def run_python(url: str, requests: int, concurrency: int) -> Load:
    """Run the generator in its own process (it forks its senders from there)."""
    command = [sys.executable, "-m", "bench.loadgen", url, str(requests), str(concurrency)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-2000:]}")
    return Load(**json.loads(done.stdout.strip().splitlines()[-1]))


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, seconds: float, concurrency: int) -> Load:
    command = ["wrk", "-t2", f"-c{concurrency}", f"-d{max(int(seconds), 1)}s", "--latency", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if total is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    duration = float(total.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}.get(total.group(3), 1.0)
    return Load(
        requests=int(total.group(1)),
        errors=(int(errors.group(1)) if errors else 0)
        + (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0),
        seconds=duration,
        p50_ms=_wrk_percentile(output, "50%"),
        p99_ms=_wrk_percentile(output, "99%"),
    )


def _wrk_percentile(output: str, label: str) -> float:
    found = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if found is None:
        return float("nan")
    return float(found.group(1)) * _UNITS[found.group(2)]


if __name__ == "__main__":
    load = _generate(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(asdict(load)))
