"""CPU per event in a Gunicorn worker: what an operator pays for each ``track()``.

One sync worker per SDK (``-w 1``, so every request lands in the process measured),
run in turn. The worker's process CPU time (all its threads: the request, the
``track()`` call and the SDK's sender) is read through ``GET /cpu`` before and after
a load of plain requests, and the read after waits until the sink has every event
the load tracked, so the sending is paid for inside the window. The no-SDK app's CPU
per request (Gunicorn parsing and answering the request) is subtracted per run.
"""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

from bench.control import SinkProcess
from bench.loadgen import run_python
from bench.plan import Plan
from bench.under_gunicorn import Gunicorn

Raw = dict[str, Any]
DELIVERY_TIMEOUT_S = 30.0


def worker_cpu_ns(base: str) -> int:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request("GET", "/cpu")
        return int(conn.getresponse().read())
    finally:
        conn.close()


def cpu_run(names: list[str], sink: SinkProcess, plan: Plan) -> dict[str, Raw]:
    """Each app's (``none`` included) worker CPU per request over ``plan.cpu_requests``.

    All apps run at once and take the load in turns (``plan.slices`` slices each), so
    a burst of noise from the machine lands on every app alike."""
    # Every SDK as an operator would run it: its own batch size and flush interval.
    servers = [Gunicorn(name, sink.url, 1) for name in names]
    try:
        for server in servers:
            server.wait_ready()
        targets = [f"{server.url}/" for server in servers]
        run_python(targets, plan.cpu_warmup, plan.cpu_concurrency, 1)
        sink.wait_quiet(0.6, 10.0)  # the warm-up's events are out of the window
        sink.reset()
        before = [worker_cpu_ns(server.url) for server in servers]
        loads = run_python(targets, plan.cpu_requests, plan.cpu_concurrency, plan.slices)
        served = [load.requests - load.errors for load in loads]
        tracked = sum(n for name, n in zip(names, served) if name != "none")
        sink.wait_events(tracked, DELIVERY_TIMEOUT_S, poll=0.05)
        after = [worker_cpu_ns(server.url) for server in servers]
        delivered = sink.stats()["events"]
    finally:
        for server in servers:
            server.stop()
    return {
        name: {
            "requests": n,
            "cpu_us_per_request": (end - start) / 1000 / max(n, 1),
            "all_delivered": delivered >= tracked,
        }
        for name, n, start, end in zip(names, served, before, after)
    }
