"""The app of the Gunicorn parts: one track() per request with the SDK named in
``BENCH_SDK`` (``none``: no SDK at all), posting to ``BENCH_URL``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any, Callable

from bench.sdks import Settings, make

_name = os.environ.get("BENCH_SDK", "none")
_sdk = make(_name, Settings(url=os.environ["BENCH_URL"])) if _name != "none" else None
OK = [b"ok"]
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "2")]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO")
    if path == "/cpu":  # this worker's CPU time so far, all its threads (the CPU part)
        used = str(time.process_time_ns()).encode()
        start_response("200 OK", [("Content-Length", str(len(used)))])
        return [used]
    if _sdk is not None and path != "/health":
        _sdk.call(properties={"report_type": "revenue", "path": path})
    start_response("200 OK", HEADERS)
    return OK
