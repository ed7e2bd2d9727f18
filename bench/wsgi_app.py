"""A minimal WSGI app that tracks one event per request with the SDK named in the
environment, for the Gunicorn runs (parts 3 and 4).

    BENCH_SDK=klime_mp BENCH_URL=http://127.0.0.1:PORT gunicorn -w 4 bench.wsgi_app:app

``BENCH_SDK=none`` is the no-SDK baseline. ``BENCH_PARENT_EVENTS=N`` tracks N events at
import, which under ``--preload`` happens in the master before it forks the workers.
``GET /track?eid=ID&marker=NAME`` tags the request's event for the fork counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any, Callable
from urllib.parse import parse_qs

from bench.sdks import Adapter, Settings, make

StartResponse = Callable[..., Any]

_name = os.environ.get("BENCH_SDK", "none")
_sdk: Adapter | None = None
if _name != "none":
    _flush = os.environ.get("BENCH_FLUSH_S")
    _sdk = make(
        _name,
        Settings(
            url=os.environ["BENCH_URL"],
            flush_interval_s=float(_flush) if _flush else None,
        ),
    )
    for _i in range(int(os.environ.get("BENCH_PARENT_EVENTS", "0"))):
        _sdk.call(properties={"report_type": "revenue", "eid": f"p-{_i}"})

OK = [b"ok"]
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "2")]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/cpu":  # this worker's CPU time so far (bench/cpu.py)
        used = str(time.process_time_ns()).encode()
        start_response("200 OK", [("Content-Length", str(len(used)))])
        return [used]
    if environ.get("PATH_INFO") == "/health":
        start_response("200 OK", HEADERS)
        return OK
    if _sdk is not None:
        props: dict[str, Any] = {"report_type": "revenue", "path": environ.get("PATH_INFO")}
        query = environ.get("QUERY_STRING")
        if query:
            for key, values in parse_qs(query).items():
                if key in ("eid", "marker"):
                    props[key] = values[0]
        _sdk.call(properties=props)
    start_response("200 OK", HEADERS)
    return OK
