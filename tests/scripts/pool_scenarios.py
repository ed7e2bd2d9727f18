"""multiprocessing scenarios for tests/test_multiprocessing.py.

``pool_scenarios.py METHOD KIND TASKS``: the parent uses the module-level client of
``fork_helpers`` (as an application would its own), leaves events queued, starts
workers with start method METHOD (fork, forkserver, spawn) in the way KIND names,
runs TASKS tasks that each track one event, and reports every tag it expects.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import fork_helpers as h

# The parent has a sender thread when the fork start method forks it: Python 3.12+
# warns about that (not an error here; test_fork checks the configure-only case).
warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)

WORKERS = 2


def run_tasks(method: str, kind: str, tags: list[str]) -> list[int]:
    ctx = multiprocessing.get_context(method)
    if kind == "close_join":
        pool = ctx.Pool(WORKERS)
        pids = pool.map(h.track_task, tags, chunksize=1)
        pool.close()
        pool.join()
        return pids
    if kind == "with_pool":  # __exit__ calls terminate(): SIGTERM to idle workers
        with ctx.Pool(WORKERS) as pool:
            return pool.map(h.track_task, tags, chunksize=1)
    if kind == "executor":
        with ProcessPoolExecutor(WORKERS, mp_context=ctx) as executor:
            return list(executor.map(h.track_task, tags))
    if kind == "process":
        processes = [ctx.Process(target=h.track_task, args=(tag,)) for tag in tags]
        for process in processes:
            process.start()
        for process in processes:
            process.join(20)
        codes = [process.exitcode for process in processes]
        assert codes == [0] * len(tags), codes
        return [process.pid or 0 for process in processes]
    if kind == "terminate":  # Process.terminate() while the task is busy
        processes = []
        for tag in tags:
            tracked = ctx.Event()
            process = ctx.Process(target=h.track_then_hang, args=(tag, tracked))
            process.start()
            assert tracked.wait(20), "the task never tracked"
            processes.append(process)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(20)
        codes = [process.exitcode for process in processes]
        assert codes == [-signal.SIGTERM] * len(tags), f"not ended by SIGTERM: {codes}"
        return [process.pid or 0 for process in processes]
    if kind == "billiard":  # Celery's multiprocessing fork: its Process, not its Pool
        import billiard  # type: ignore[import-not-found]

        processes = [billiard.Process(target=h.track_task, args=(tag,)) for tag in tags]
        for process in processes:
            process.start()
        for process in processes:
            process.join(20)
        assert [process.exitcode for process in processes] == [0] * len(tags)
        return [process.pid or 0 for process in processes]
    raise ValueError(f"unknown kind {kind!r}")


def main(method: str, kind: str, tasks: str) -> None:
    client = h.CLIENT
    assert client is not None
    tags = [h.track(client, f"parent-sent-{i}") for i in range(3)]
    assert client.flush(10), "parent flush timed out"
    tags += [h.track(client, f"parent-queued-{i}") for i in range(2)]  # queued at the start
    task_tags = [f"task-{i}" for i in range(int(tasks))]
    pids = run_tasks(method, kind, task_tags)
    assert os.getpid() not in pids, "tasks ran in the parent"
    tags += task_tags
    tags += [h.track(client, f"parent-after-{i}") for i in range(2)]
    assert client.flush(10), "parent flush timed out"
    h.report(tags=tags, workers=len(set(pids)))


if __name__ == "__main__":
    main(*sys.argv[1:])
