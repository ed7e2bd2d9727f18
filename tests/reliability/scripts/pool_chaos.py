"""A multiprocessing pool tracking events against a faulty collector, for test_chaos.

``pool_chaos.py ENDPOINT LOG SECONDS``. The parent configures the default client (no
thread, no socket), then a fork pool of 4 workers recycled every few tasks
(``maxtasksperchild``) tracks events for SECONDS. Each event carries a unique
(``task``, ``seq``) pair. Protocol on stdout/stdin, one JSON line each:

    -> {"phase": "loaded", "tracked": N, ...}   every task has returned
    <- "heal"                                   the test stopped the faults
    -> {"phase": "done", ...}                   the pool is closed and joined

Each worker appends its final ``stats()`` (after its exit flush) and every on_error
call to LOG, one JSON line each.
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
import time
from typing import Any

import klime_mp
from klime_mp.lifecycle import forksafe

WORKERS = 4
TASKS_PER_CHILD = 6  # a worker is replaced after this many tasks: recycling under faults
EVENTS_PER_TASK = 25
EVENT_GAP_S = 0.008  # about 100 events/s per worker: bounded load for a 2-core CI box


def append(path: str, record: dict[str, Any]) -> None:
    # One O_APPEND write per line: lines of concurrent processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"pid": os.getpid(), **record}) + "\n").encode())
    finally:
        os.close(fd)


def on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
    append(os.environ["CHAOS_LOG"], {"kind": "error", "count": len(events), "error": str(error)})


_workers: list[Any] = []


def keep_workers() -> None:
    # The exit flush lets go of this process's client state; keep a reference to read
    # its final counters afterwards.
    _workers.extend(forksafe.owned_values())


def dump_stats() -> None:
    if not _workers:
        return
    stats = _workers[0].stats()
    append(
        os.environ["CHAOS_LOG"],
        {
            "kind": "stats",
            "enqueued": stats.enqueued,
            "sent": stats.sent,
            "failed": stats.failed,
            "retries": stats.retries,
            "batches": stats.batches,
            "queued": stats.queued,
            "dropped": stats.dropped,
        },
    )


def init_worker() -> None:
    # klime_mp's exit flush runs at priority 100: look before it, count after it.
    multiprocessing.util.Finalize(None, keep_workers, exitpriority=101)
    multiprocessing.util.Finalize(None, dump_stats, exitpriority=1)


def task(number: int) -> tuple[int, int]:
    tracked = 0
    for seq in range(EVENTS_PER_TASK):
        if seq % 10 == 0:
            klime_mp.identify(f"usr_{number}_{seq}", {"task": number, "seq": seq})
        else:
            klime_mp.track("Chaos", {"task": number, "seq": seq}, user_id=f"usr_{number}")
        tracked += 1
        time.sleep(EVENT_GAP_S)
    return os.getpid(), tracked


def task_count(seconds: float) -> int:
    # Fixed up front: the pool's feeder thread drains any task generator at once.
    return max(WORKERS, round(seconds * WORKERS / (EVENTS_PER_TASK * EVENT_GAP_S)))


def main() -> None:
    endpoint, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    os.environ["CHAOS_LOG"] = log
    options = json.loads(os.environ["CHAOS_CLIENT"])
    klime_mp.configure("chaos-key", endpoint=endpoint, on_error=on_error, **options)
    context = multiprocessing.get_context("fork")
    pool = context.Pool(WORKERS, init_worker, maxtasksperchild=TASKS_PER_CHILD)
    pids, tracked, count = set(), 0, 0
    for pid, done in pool.imap_unordered(task, range(task_count(seconds)), chunksize=1):
        pids.add(pid)
        tracked += done
        count += 1
    print(json.dumps({"phase": "loaded", "tracked": tracked, "tasks": count}), flush=True)
    assert sys.stdin.readline().strip() == "heal"
    pool.close()
    pool.join()
    print(json.dumps({"phase": "done", "tracked": tracked, "worker_pids": len(pids)}), flush=True)


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's dump on a hang
    main()
