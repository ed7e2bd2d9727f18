"""The sink's own ceiling: how many events/s it absorbs from a trivial client.

One process posts the same 100-event klime_mp batch over one keep-alive
``http.client`` connection, as fast as the sink answers: no SDK work at all. If an
SDK's burst figure (part 2) comes near this, the sink, not the SDK, bounds it.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

from bench.control import SinkProcess
from klime_mp import events

BATCH = 100


def _body() -> bytes:
    props = {"report_type": "revenue", "eid": "x"}
    batch = [events.encode_track("Report Generated", props, "usr_1", None) for _ in range(BATCH)]
    return b'{"batch":[' + b",".join(batch) + b"]}"


def ceiling(sink: SinkProcess, total: int) -> dict[str, Any]:
    """Post ``total`` events in 100-event batches; events/s as the sink received them."""
    url = urlsplit(sink.url)
    body = _body()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    sink.reset()
    cpu_before = sink.stats()["cpu_ns"]
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    started = time.monotonic_ns()
    try:
        for _ in range(total // BATCH):
            conn.request("POST", "/v1/batch", body, headers)
            conn.getresponse().read()
    finally:
        conn.close()
    stats = sink.stats()
    seconds = (stats["last_event_ns"] - started) / 1e9
    cpu_s = (stats["cpu_ns"] - cpu_before) / 1e9
    return {
        "events": stats["events"],
        "seconds": seconds,
        "events_per_s": stats["events"] / seconds,  # one connection, request by request
        "sink_cpu_s": cpu_s,
        "cpu_events_per_s": stats["events"] / cpu_s,  # were the sink never descheduled
    }


if __name__ == "__main__":
    with_sink = SinkProcess()
    try:
        for _ in range(3):
            print(json.dumps(ceiling(with_sink, 50_000)))
    finally:
        with_sink.stop()
