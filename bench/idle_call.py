"""What one track() costs in a process that idles between calls, as a web worker does
between requests, for every SDK in one run (part 1 times the same call in a tight loop).

A sync Gunicorn worker sleeps in ``select()`` between requests. On the machines we
measured (shared 2-core VMs), code that runs right after such an idle is several times
slower than the same code in a loop: caches and branch predictors have been lost to other
work. This is why the CPU per event in a Gunicorn worker (part 0) is ten times the loop
figure, and why it grows with the amount of code and data a call touches rather than
with its cost in a loop.

    python -m bench.idle_call [--calls 1000] [--idle-ms 2]

Each round times one call of each SDK after an idle of ``--idle-ms`` (``time.sleep``),
SDKs in turn, so noise lands on all of them. Every
SDK posts to the collector in sink mode with its own defaults (queues large enough to drop
nothing), so a call that sends inline, as the official SDK's does when its batch fills,
costs what it costs; the median keeps those rare calls out. ``encode_only`` is the least
an SDK can do in the call (``bench.sdks.EncodeOnly``).
"""

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
