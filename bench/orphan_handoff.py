"""How long a SIGKILLed process's events wait before a live sibling sends them:
``python -m bench.orphan_handoff [--runs 5] [--events 550]``; method in
docs/performance.md."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.collector import wait_until
from bench.table import arguments
from klime_mp.collector import Collector

SIBLING = textwrap.dedent("""
    import sys, time
    from klime_mp import KlimeClient
    client = KlimeClient("bench-key", sys.argv[1], spool_dir=sys.argv[2])
    client.track("Sibling", user_id="s")
    print("ready", flush=True)
    while True:  # a live process of the app, busy with its own work
        time.sleep(1)
        client.track("Sibling", user_id="s")
""")

VICTIM = textwrap.dedent("""
    import os, signal, sys
    from klime_mp import KlimeClient
    client = KlimeClient("bench-key", sys.argv[1], spool_dir=sys.argv[2],
                         flush_interval=3_600_000, max_batch_size=100)
    for n in range(int(sys.argv[3])):
        client.track("Victim", {"n": n}, user_id="v")
        if client.queue_size() >= 99:
            client.flush(10)  # batches below 100 never go out on their own: these do
    print("killing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _victims_stored(collector: Collector) -> int:
    return len({e["properties"]["n"] for e in collector.events() if e.get("event") == "Victim"})


def one_run(events: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, Collector(db=Path(tmp, "c.sqlite3")) as sink:
        spool = str(Path(tmp, "spool"))
        sibling = subprocess.Popen(
            [sys.executable, "-c", SIBLING, sink.url, spool], stdout=subprocess.PIPE, text=True
        )
        try:
            assert sibling.stdout is not None and sibling.stdout.readline().strip() == "ready"
            time.sleep(random.uniform(0, 2))  # the kill lands anywhere in the sibling's cycle
            victim = subprocess.run(
                [sys.executable, "-c", VICTIM, sink.url, spool, str(events)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            killed = time.monotonic()
            assert victim.returncode < 0, victim.stderr
            unsent = events - _victims_stored(sink)
            if not wait_until(lambda: _victims_stored(sink) >= events, 60.0):
                raise RuntimeError("the sibling never sent the orphan")
            took = time.monotonic() - killed
            print(f"  {unsent} events unsent at the kill; all {events} stored {took:.2f} s later")
            return took
        finally:
            sibling.kill()
            sibling.wait()


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv, runs=5, events=550)
    times = [one_run(args.events) for _ in range(args.runs)]
    print(
        f"SIGKILL to delivery by a live sibling: median {statistics.median(times):.2f} s, "
        f"min {min(times):.2f} s, max {max(times):.2f} s over {args.runs} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
