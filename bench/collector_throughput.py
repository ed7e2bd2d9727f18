"""How many events per second the local collector stores.

Several client processes post 100-event batches over keep-alive http.client
connections to one collector (in this process, or at --url), for --seconds.

    python bench/collector_throughput.py --processes 4 --seconds 5
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import multiprocessing
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from klime_mp.collector import Collector


def batch_body(size: int, ids: Iterator[str]) -> bytes:
    """A realistic batch; ids come from a cheap counter so the clients' own CPU use
    (which shares the machine with the collector) stays small."""
    events = [
        {
            "type": "track",
            "messageId": next(ids),
            "timestamp": "2026-11-22T10:00:00.123Z",
            "event": "Report Generated",
            "userId": "usr_1",
            "groupId": "org_1",
            "properties": {"report_type": "revenue", "rows": 1234},
            "context": {"library": {"name": "bench", "version": "0"}},
        }
        for _ in range(size)
    ]
    return json.dumps({"batch": events}).encode()


def client(url: str, seconds: float, batch: int, result: multiprocessing.Queue[int]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    ids = (f"{uuid.uuid4()}-{n}" for n in itertools.count())
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.request("POST", "/v1/batch", batch_body(batch, ids), headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"unexpected status {response.status}")
        sent += batch
    conn.close()
    result.put(sent)


def measure(url: str, processes: int, seconds: float, batch: int) -> int:
    result: multiprocessing.Queue[int] = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=client, args=(url, seconds, batch, result))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    total = sum(result.get(timeout=seconds + 60) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--url", help="an already running collector (default: start one)")
    args = parser.parse_args()
    if args.url:
        total = measure(args.url, args.processes, args.seconds, args.batch)
        print(f"{total / args.seconds:,.0f} events/s sent")
        return
    with tempfile.TemporaryDirectory() as tmp, Collector(db=Path(tmp) / "bench.sqlite3") as c:
        started = time.monotonic()
        total = measure(c.url, args.processes, args.seconds, args.batch)
        elapsed = time.monotonic() - started
        stats = c.stats()
    print(
        f"{args.processes} processes, {args.batch}-event batches: {total} events in "
        f"{elapsed:.1f} s = {total / elapsed:,.0f} events/s "
        f"(stored {stats.stored}, connections {stats.connections})"
    )


if __name__ == "__main__":
    main()
