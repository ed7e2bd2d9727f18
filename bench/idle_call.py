"""What one track() costs after an idle, as in a web worker between requests, for every
SDK in one run: ``python -m bench.idle_call [--calls 1000] [--idle-ms 2]``; method and
why in docs/performance.md."""

from __future__ import annotations

import os
import time

from bench.collector import Sink
from bench.sdks import SDKS, Settings, make
from bench.table import arguments, percentile

NAMES = (*SDKS, "encode_only")


def main() -> None:
    args = arguments(__doc__, calls=1000, idle_ms=2.0)
    sink = Sink()
    settings = Settings(url=sink.url, queue_size=10 * args.calls + 200_000)
    calls = {name: make(name, settings).call for name in NAMES}
    properties = {"report_type": "revenue", "path": "/"}
    for call in calls.values():
        call(properties=dict(properties))  # first use: threads, connections, imports
    idle_ns: dict[str, list[int]] = {name: [] for name in NAMES}
    for _ in range(args.calls):
        for name, call in calls.items():
            time.sleep(args.idle_ms / 1000)
            props = dict(properties)
            start = time.perf_counter_ns()
            call(properties=props)
            idle_ns[name].append(time.perf_counter_ns() - start)
    print(f"track() after a {args.idle_ms:g} ms idle, {args.calls} calls each, µs")
    print(f"{'SDK':16} {'p50':>7} {'p90':>7} {'p50 vs klime_mp':>16}")
    ours = percentile(sorted(idle_ns["klime_mp"]), 0.5)
    for name in NAMES:
        p50, p90 = (percentile(sorted(idle_ns[name]), q) for q in (0.5, 0.9))
        print(f"{name:16} {p50 / 1000:7.1f} {p90 / 1000:7.1f} {p50 / ours:15.2f}x")
    sink.stop()
    os._exit(0)  # no SDK's exit flush: the sink is gone


if __name__ == "__main__":
    main()
