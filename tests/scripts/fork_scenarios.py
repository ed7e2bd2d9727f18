"""os.fork() scenarios for tests/test_fork.py: ``fork_scenarios.py NAME [ARGS]``.

Each scenario tracks events tagged with unique strings in the parent and in its
children, waits for every child, flushes, and reports the tags it expects the
collector to hold exactly once (``fork_helpers.report``). Children report failures
through their exit code; the parent exits non-zero if any child failed.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import sys
import threading
import time
import warnings
from typing import Any, Callable

import fork_helpers as h

import klime_mp
from klime_mp.lifecycle import forksafe

# Forking a process that has a sender thread is what several scenarios do on purpose;
# Python 3.12+ warns about it (not an error); test_fork checks the configure-only case.
warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)


def check(condition: bool, message: str) -> None:
    if not condition:
        faulthandler.dump_traceback(all_threads=True)  # where a stuck process is stuck
        raise AssertionError(message)


def wait_all(pids: list[int]) -> None:
    codes = [h.reap(pid) for pid in pids]
    check(all(code == 0 for code in codes), f"children exited {codes}")


def track_many(client: klime_mp.KlimeClient, prefix: str, count: int) -> list[str]:
    return [h.track(client, f"{prefix}-{i}") for i in range(count)]


def queued_before_fork(exit_with: str) -> None:
    """Parent events still queued at the fork stay the parent's; the child sends its own."""
    client = h.make_client()
    tags = track_many(client, "parent-pre", 5)
    check(client.queue_size() == 5, "parent events should be queued")
    check(threading.active_count() == 2, "the parent's sender runs")

    def child() -> None:
        # Everything per-process starts empty; nothing runs until the first event.
        check(client.queue_size() == 0, "the child must not see the parent's queue")
        check(client.stats() == klime_mp.Stats(), "counters start from zero")
        check(threading.active_count() == 1, "no sender before the child's first event")
        track_many(client, f"child-{exit_with}", 3)
        check(threading.active_count() == 2, "the child's first event starts its sender")
        if exit_with == "os._exit":
            check(client.flush(10), "child flush timed out")

    wait_all([h.fork(child, exit_with)])
    check(client.queue_size() == 5, "the parent's queue is untouched by the child")
    tags += [f"child-{exit_with}-{i}" for i in range(3)]
    tags += track_many(client, "parent-post", 2)
    check(client.flush(10), "parent flush timed out")
    h.report(tags=tags)


def grandchild() -> None:
    """A fork of a fork, each with events queued when it forks."""
    client = h.make_client()
    tags = track_many(client, "parent", 3)

    def grandchild_body() -> None:
        check(client.queue_size() == 0, "grandchild starts empty")
        track_many(client, "grandchild", 3)

    def child() -> None:
        track_many(client, "child", 3)
        check(client.queue_size() == 3, "child events queued at the second fork")
        wait_all([h.fork(grandchild_body, "sys.exit")])
        check(client.queue_size() == 3, "the grandchild took nothing from the child")

    wait_all([h.fork(child, "sys.exit")])
    tags += [f"{who}-{i}" for who in ("child", "grandchild") for i in range(3)]
    check(client.flush(10), "parent flush timed out")
    h.report(tags=tags)


def daemon() -> None:
    """The classic double fork: the daemon is nobody's child and exits normally."""
    client = h.make_client()
    tags = track_many(client, "parent", 3)
    read_end, write_end = os.pipe()

    def daemon_body() -> None:
        os.close(read_end)  # the write end stays open until the daemon has exited
        track_many(client, "daemon", 4)

    def first_child() -> None:
        os.setsid()
        h.fork(daemon_body, "sys.exit")  # not waited for: the daemon outlives us

    wait_all([h.fork(first_child)])
    os.close(write_end)
    os.read(read_end, 1)  # EOF once the daemon has exited (after its exit flush)
    tags += [f"daemon-{i}" for i in range(4)]
    check(client.flush(10), "parent flush timed out")
    h.report(tags=tags)


def c_level_fork(exit_with: str) -> None:
    """fork() called from C, as uWSGI does: no Python at-fork hook runs in the child.

    ctypes.PyDLL keeps the GIL held across the call, so the child has it; the parent's
    sender thread exists in the child's interpreter state but not in reality."""
    client = h.make_client()
    tags = track_many(client, "parent-sent", 3)
    check(client.flush(10), "parent flush timed out")  # a live keep-alive connection
    tags += track_many(client, "parent-queued", 4)  # queued at the fork
    parent = os.getpid()
    libc = ctypes.PyDLL(None)
    pid = libc.fork()
    if pid == 0:
        code = 1
        try:
            # The hook did not run: the registry still holds the parent's worker.
            check(client._worker._state[0] == parent, "an at-fork hook ran")
            check(client.queue_size() == 0, "the PID check hides the parent's queue")
            track_many(client, "c-child", 3)
            check(client.flush(10), "c-child flush timed out")
            code = 0
        except BaseException as exc:
            sys.stderr.write(f"c-level child failed: {exc!r}\n")
        finally:
            if exit_with == "os._exit" or code:
                os._exit(code)
        sys.exit(0)
    check(pid > 0, "fork failed")
    wait_all([pid])
    tags += [f"c-child-{i}" for i in range(3)]
    check(client.flush(10), "parent flush timed out")
    h.report(tags=tags)


def configure_then_fork(children: str) -> None:
    """A pre-fork master (Gunicorn --preload) that only configured: no thread, no
    socket; each worker's first event starts that worker's sender."""
    threads, fds = threading.active_count(), sorted(os.listdir("/proc/self/fd"))
    klime_mp.configure(
        h.WRITE_KEY,
        endpoint=os.environ[h.ENDPOINT_ENV],
        flush_interval=h.LONG_INTERVAL_MS,
        on_error=h._on_error,
    )
    check(threading.active_count() == threads, "configure() started a thread")
    check(sorted(os.listdir("/proc/self/fd")) == fds, "configure() opened a file or socket")

    def worker(n: int) -> Callable[[], None]:
        def body() -> None:
            check(threading.active_count() == 1, "worker born with extra threads")
            klime_mp.track(h.EVENT, {"tag": f"worker-{n}"}, user_id="usr_fork")
            check(threading.active_count() == 2, "the first event starts the sender")

        return body

    pids = [h.fork(worker(n), "sys.exit") for n in range(int(children))]
    wait_all(pids)
    check(threading.active_count() == threads, "the master must stay single-threaded")
    tags = [f"worker-{n}" for n in range(int(children))]
    klime_mp.track(h.EVENT, {"tag": "master-after"}, user_id="usr_fork")
    check(klime_mp.flush(10), "master flush timed out")
    h.report(tags=[*tags, "master-after"])


def keep_alive(children: str) -> None:
    """The parent's pooled connection survives its children, and every process gets
    its own answers: the test counts connections and per-process acceptances."""
    client = h.make_client()
    tags = track_many(client, "parent-before", 5)
    check(client.flush(10), "parent flush timed out")

    def child(n: int) -> Callable[[], None]:
        def body() -> None:
            track_many(client, f"child{n}", 5)
            check(client.flush(10), "child flush timed out")
            track_many(client, f"child{n}-exit", 2)  # sent by the exit flush

        return body

    pids = [h.fork(child(n), "sys.exit") for n in range(int(children))]
    wait_all(pids)
    for n in range(int(children)):
        tags += [f"child{n}-{i}" for i in range(5)] + [f"child{n}-exit-{i}" for i in range(2)]
    tags += track_many(client, "parent-after", 5)
    check(client.flush(10), "parent flush timed out")
    stats = client.stats()
    check(stats.retries == 0 and stats.failed == 0, f"parent had trouble: {stats}")
    h.report(tags=tags, parent=os.getpid(), children=pids)


def pooled_connection(client: klime_mp.KlimeClient) -> Any:
    """The kept-alive connection idle in the client's urllib3 pool in this process."""
    pool = client._worker.get()._transport._pool
    check(pool is not None and pool.pool is not None, "no connection pool")
    idle = [conn for conn in pool.pool.queue if conn is not None and conn.sock is not None]
    check(len(idle) == 1, f"expected one kept-alive connection, found {len(idle)}")
    return idle[0]


def held_locks() -> None:
    """Fork while another thread holds every lock the parent's worker uses, its urllib3
    pool's queue lock included: a child that acquired any of them would hang forever
    (its watchdog ends it)."""
    client = h.make_client()
    tags = track_many(client, "parent", 3)
    check(client.flush(10), "parent flush timed out")
    worker: Any = client._worker.get()
    connection = pooled_connection(client)
    pool_queue = worker._transport._pool.pool
    locks = [worker._lock, worker._send_lock, forksafe.process_lock(), pool_queue.mutex]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        held.set()
        release.wait()
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()

    def child() -> None:
        track_many(client, "child", 3)
        check(client.flush(10), "child flush timed out")

    pid = h.fork(child)
    wait_all([pid])
    release.set()
    holder.join()
    tags += [f"child-{i}" for i in range(3)]
    tags += track_many(client, "parent-after", 2)
    check(client.flush(10), "parent flush timed out")
    check(pooled_connection(client) is connection, "the parent's connection was replaced")
    h.report(tags=tags)


def keep_alive_while_sending(children: str) -> None:
    """Fork again and again while two threads track and the parent's sender posts, so
    some forks land mid-request or while the pool's lock is held. Each child abandons
    the parent's connection (without a lock, without shutting it down) and sends its
    own events on its own connection; the parent keeps its one connection (the test
    counts the collector's connections)."""
    client = h.make_client(flush_interval=10, max_batch_size=5)
    tags = track_many(client, "parent-before", 5)
    check(client.flush(10), "parent flush timed out")
    batches_before = client.stats().batches
    stop = threading.Event()
    counts = [0, 0]

    def tracker(n: int) -> None:
        while not stop.is_set():
            h.track(client, f"thread{n}-{counts[n]}")
            counts[n] += 1
            stop.wait(0.002)

    threads = [threading.Thread(target=tracker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()

    def child(n: int) -> Callable[[], None]:
        def body() -> None:
            track_many(client, f"child{n}", 2)
            check(client.flush(10), "child flush timed out")

        return body

    pids = []
    for n in range(int(children)):
        pids.append(h.fork(child(n)))
        stop.wait(0.03)  # the sender posts a batch or two between forks
    wait_all(pids)
    stop.set()
    for thread in threads:
        thread.join()
    check(client.flush(10), "parent flush timed out")
    stats = client.stats()
    check(stats.retries == 0 and stats.failed == 0, f"parent had trouble: {stats}")
    tags += [f"thread{n}-{i}" for n in range(2) for i in range(counts[n])]
    tags += [f"child{n}-{i}" for n in range(int(children)) for i in range(2)]
    h.report(tags=tags, parent_batches=stats.batches - batches_before)


def stress(forks: str) -> None:
    """Four threads track in a loop while the main thread forks; every child tracks
    one event and exits (one in ten through atexit, the others after flush())."""
    client = h.make_client(max_queue_size=100_000, max_batch_size=100, flush_interval=50)
    stop = threading.Event()
    counts = [0] * 4

    def tracker(n: int) -> None:
        while not stop.is_set():
            h.track(client, f"thread{n}-{counts[n]}")
            counts[n] += 1
            time.sleep(0.001)  # a busy app, not a benchmark: the queue must not fill

    threads = [threading.Thread(target=tracker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    live: list[int] = []
    failures = 0
    for n in range(int(forks)):
        if len(live) >= 8:
            failures += h.reap(live.pop(0)) != 0
        # A normal interpreter exit costs ~0.1 s of CPU (finalization), os._exit none.
        exit_with = "sys.exit" if n % 10 == 0 else "os._exit"
        live.append(h.fork(stress_child(client, n, exit_with), exit_with))
    failures += sum(h.reap(pid) != 0 for pid in live)
    stop.set()
    for thread in threads:
        thread.join()
    check(client.flush(20), "parent flush timed out")
    check(failures == 0, f"{failures} children failed")
    stats = client.stats()
    check(not stats.dropped, f"parent dropped events: {stats.dropped}")
    tags = [f"thread{n}-{i}" for n in range(4) for i in range(counts[n])]
    tags += [f"child-{n}" for n in range(int(forks))]
    h.report(tags=tags, seconds=time.monotonic() - started, thread_events=sum(counts))


def stress_child(client: klime_mp.KlimeClient, n: int, exit_with: str) -> Callable[[], None]:
    def body() -> None:
        h.track(client, f"child-{n}")
        if exit_with == "os._exit":
            check(client.flush(10), "child flush timed out")

    return body


def poll(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until ``condition()`` holds (a generous deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        check(time.monotonic() < deadline, "timed out waiting for a condition")
        time.sleep(0.005)


def mid_request() -> None:
    """Fork while the parent's sender waits for a slow server's answer (the collector
    runs with --delay): the answer still reaches the parent, the child works."""
    client = h.make_client(max_batch_size=5)
    tags = track_many(client, "parent", 5)  # a full batch: the sender sends at once
    poll(lambda: client.queue_size() == 0)  # the sender took the batch: the request is
    # in flight now (the server holds it 0.4 s)

    def child() -> None:
        track_many(client, "child", 3)

    wait_all([h.fork(child, "sys.exit")])
    tags += [f"child-{i}" for i in range(3)]
    check(client.flush(10), "parent flush timed out")
    stats = client.stats()
    check(stats.sent == 5 and stats.retries == 0, f"the parent's request broke: {stats}")
    h.report(tags=tags)


def in_backoff() -> None:
    """Fork while the sender sleeps in a retry backoff (no server yet); the test starts
    the collector after READY and every process then delivers."""
    client = h.make_client(
        max_batch_size=3, retry_initial_delay=100, retry_max_attempts=40, shutdown_timeout=15
    )
    tags = track_many(client, "parent", 3)  # full batch: sent at once, refused, retried
    # The scenario, not synchronisation: refused at once each time, the sender spends
    # nearly all of this in its backoff (stats().retries only moves when a batch
    # settles, so there is no live condition to wait for).
    time.sleep(0.5)

    def child(n: int) -> Callable[[], None]:
        def body() -> None:
            track_many(client, f"child{n}", 2)

        return body

    pids = [h.fork(child(n), "sys.exit") for n in range(2)]
    print("READY", flush=True)
    wait_all(pids)
    tags += [f"child{n}-{i}" for n in range(2) for i in range(2)]
    check(client.flush(20), "parent flush timed out")
    h.report(tags=tags)


SCENARIOS: dict[str, Callable[..., None]] = {
    "queued_before_fork": queued_before_fork,
    "grandchild": grandchild,
    "daemon": daemon,
    "c_level_fork": c_level_fork,
    "configure_then_fork": configure_then_fork,
    "keep_alive": keep_alive,
    "keep_alive_while_sending": keep_alive_while_sending,
    "held_locks": held_locks,
    "stress": stress,
    "mid_request": mid_request,
    "in_backoff": in_backoff,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
