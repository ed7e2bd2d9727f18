"""Track at a steady rate against a server that is down; sample this process's RSS.

``soak.py ENDPOINT SECONDS RATE``: tracks RATE events a second for SECONDS with the
default client options (a queue of 1000), samples the resident set size and the
queue length once a second, and prints one JSON report.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
from typing import Any

from klime_mp import KlimeClient

TICK_S = 0.01
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def main() -> None:
    endpoint, seconds, rate = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    reported = {"calls": 0, "events": 0}

    def on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
        reported["calls"] += 1
        reported["events"] += getattr(error, "count", len(events))  # a long overflow

    # The official SDK's queue size: the cap is what this soak watches, reached in a second.
    client = KlimeClient(
        "soak-key", endpoint, on_error=on_error, shutdown_timeout=1.0, max_queue_size=1000
    )
    per_tick = max(1, round(rate * TICK_S))
    samples: list[dict[str, float]] = []
    tracked = 0
    started = next_tick = next_sample = time.monotonic()
    while (now := time.monotonic()) < started + seconds:
        if now >= next_sample:
            samples.append(
                {"t": round(now - started, 2), "rss": rss_bytes(), "queued": client.queue_size()}
            )
            next_sample += 1.0
        for _ in range(per_tick):
            client.track(
                "Soak", {"n": tracked, "page": "/reports/42", "ms": 12.5}, user_id="usr_soak"
            )
            tracked += 1
        next_tick += TICK_S
        time.sleep(max(0.0, next_tick - time.monotonic()))
    stats = client.stats()
    shutdown_started = time.monotonic()
    delivered = client.shutdown()
    result = {
        "tracked": tracked,
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
        "enqueued": stats.enqueued,
        "sent": stats.sent,
        "failed": stats.failed,
        "retries": stats.retries,
        "dropped": client.stats().dropped,
        "dropped_before_shutdown": stats.dropped,
        "shutdown_seconds": round(time.monotonic() - shutdown_started, 2),
        "shutdown_delivered": delivered,
        "on_error": reported,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's dump on a hang
    main()
