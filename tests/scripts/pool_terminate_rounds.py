"""Pool.terminate() over and over, for tests/test_multiprocessing.py (issue #19).

``pool_terminate_rounds.py ROUNDS``: the parent has a client with queued events (as an
application would); each round a fork pool of 2 runs tasks that track (workers with a
client of their own, so a SIGTERM flush) or that do not (workers with none), then
``terminate()``s it while the workers are idle in the task queue's lock. A
``terminate()`` that does not return within HANG_S counts as a hang, and its workers
are SIGKILLed so that the run still ends. Reports the hangs and every tag it expects.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import warnings

import fork_helpers as h

warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)

HANG_S = 20.0


def nothing(n: int) -> int:
    return os.getpid()


def terminate_in_a_thread(pool: multiprocessing.pool.Pool) -> threading.Event:
    returned = threading.Event()

    def terminate() -> None:
        pool.terminate()
        returned.set()

    threading.Thread(target=terminate, daemon=True).start()
    return returned


def main(rounds: int) -> None:
    client = h.CLIENT
    assert client is not None
    tags = [h.track(client, "parent-queued")]
    ctx = multiprocessing.get_context("fork")
    hangs = []
    for n in range(rounds):
        pool = ctx.Pool(2)
        if n % 2:
            pool.map(nothing, range(4), chunksize=1)
        else:
            round_tags = [f"round-{n}-{i}" for i in range(4)]
            pool.map(h.track_task, round_tags, chunksize=1)
            tags += round_tags
        workers = list(pool._pool)  # type: ignore[attr-defined]
        returned = terminate_in_a_thread(pool)
        if not returned.wait(HANG_S):
            hangs.append(n)
            for worker in workers:
                if worker.exitcode is None and worker.pid:
                    os.kill(worker.pid, signal.SIGKILL)
            assert returned.wait(HANG_S), "terminate() still stuck after SIGKILL"
        pool.join()
        codes = {w.exitcode for w in workers}
        if not hangs or hangs[-1] != n:  # its sentinel, or SIGTERM (after a flush)
            assert codes <= {0, -signal.SIGTERM}, codes
    assert client.flush(10), "parent flush timed out"
    h.report(rounds=rounds, hangs=hangs, tags=tags)


if __name__ == "__main__":
    main(int(sys.argv[1]))
