"""CPU per POST of the transport, against the HTTP stacks under it, in one run:
``python -m bench.transport_cpu [--posts 2000] [--rounds 7]``; method in
docs/performance.md."""

from __future__ import annotations

import json
import statistics
import time
from importlib.metadata import version
from typing import Callable

import urllib3

from bench.collector import Sink, connection
from bench.table import alternate, arguments
from klime_mp.delivery.transport import Transport
from klime_mp.options import build_options

EVENTS = 20
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer k", "User-Agent": "b"}


def batch_body() -> bytes:
    event = {
        "type": "track",
        "messageId": "0" * 36,
        "event": "Button Clicked",
        "userId": "usr_12345",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "properties": {"n": 1, "plan": "pro", "page": "/pricing"},
        "context": {"library": {"name": "klime_mp", "version": "0.1.0"}},
    }
    return json.dumps({"batch": [event] * EVENTS}).encode()


def variants(url: str, body: bytes) -> dict[str, Callable[[], object]]:
    conn = connection(url)

    def with_http_client() -> object:
        conn.request("POST", "/v1/batch", body, HEADERS)
        return conn.getresponse().read()

    pool = urllib3.HTTPConnectionPool(conn.host, conn.port, maxsize=1, retries=False)
    ours = Transport(build_options("k", url))  # one POST without the worker around it
    return {
        "http.client": with_http_client,
        f"urllib3 {version('urllib3')} pool": lambda: pool.urlopen(
            "POST", "/v1/batch", body=body, headers=HEADERS, retries=False
        ),
        "klime_mp Transport": lambda: ours.post(body, 10.0),
    }


def cpu_per_post(post: Callable[[], object], posts: int) -> Callable[[], float]:
    def run() -> float:
        started = time.process_time()
        for _ in range(posts):
            post()
        return (time.process_time() - started) / posts * 1e6

    return run


def measure(posts: int, rounds: int) -> dict[str, list[float]]:
    sink = Sink()
    try:
        cases = variants(sink.url, batch_body())
        return alternate({n: cpu_per_post(post, posts) for n, post in cases.items()}, rounds)
    finally:
        sink.stop()


def main() -> None:
    args = arguments(__doc__, posts=2000, rounds=7)
    print(f"{EVENTS}-event POSTs, {args.posts} per round, {args.rounds} rounds (CPU µs/POST)")
    for name, values in measure(args.posts, args.rounds).items():
        median = statistics.median(values)
        print(f"  {name:24s} median {median:6.1f}  min {min(values):6.1f}  max {max(values):6.1f}")


if __name__ == "__main__":
    main()
