"""What the spool costs: ``python tests/scripts/spool_bench.py [--events N] [--size BYTES]``.

Prints, for N events of BYTES each, in one run (so machine noise hits all alike):
- ``os.write`` of a same-sized buffer to an O_APPEND file (the floor: one system call);
- ``EventLog.append`` per call, p50 / p99 / p99.9 (framing, checksum, lock, write);
- ``take`` + ``acknowledge`` per event, in batches of 100 (the sender's side);
- claiming the log as an orphan and reading it all, per event.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from klime_mp.spool import log as spool
from klime_mp.spool.format import HEADER_BYTES


def percentiles(samples_ns: list[int]) -> str:
    samples_ns.sort()
    n = len(samples_ns)

    def at(q: float) -> float:
        return samples_ns[min(n - 1, int(q * n))] / 1000

    return f"p50 {at(0.50):.2f} us  p99 {at(0.99):.2f} us  p99.9 {at(0.999):.2f} us"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=300)
    args = parser.parse_args()
    data = b"x" * args.size
    clock = time.perf_counter_ns
    with tempfile.TemporaryDirectory() as root:
        floor = os.open(Path(root) / "floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        framed = b"x" * (args.size + HEADER_BYTES)
        samples = []
        for _ in range(args.events):
            start = clock()
            os.write(floor, framed)
            samples.append(clock() - start)
        os.close(floor)
        print(f"os.write        {percentiles(samples)}")

        app = spool.app_directory(root, "http://127.0.0.1:9", "bench")
        log = spool.EventLog.open(app, max_bytes=1 << 40, on_loss=lambda reason, lost: None)
        samples = []
        for _ in range(args.events):
            start = clock()
            log.append(data)
            samples.append(clock() - start)
        print(f"append          {percentiles(samples)}")

        start = clock()
        taken = 0
        while batch := log.take(100, 5 << 20):
            log.acknowledge(len(batch))
            taken += len(batch)
        per_event = (clock() - start) / taken / 1000
        print(f"take+ack        {per_event:.2f} us per event ({taken} events, batches of 100)")

        for _ in range(args.events):
            log.append(data)
        log.close()  # unacknowledged: an orphan
        start = clock()
        orphan = spool.claim_orphan(app)
        assert orphan is not None
        claimed = clock() - start
        read = 0
        while batch := orphan.take(100, 5 << 20):
            orphan.acknowledge(len(batch))
            read += len(batch)
        orphan.release()
        total = (clock() - start) / 1000
        print(
            f"orphan          claim {claimed / 1e6:.1f} ms, claim+read {total / read:.2f} us "
            f"per event ({read} events)"
        )
        print(f"load average    {statistics.mean(os.getloadavg()):.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
