"""Spool scenarios for tests/test_spool.py: ``spool_scenarios.py NAME APP_DIR [ARGS...]``.

Each one is a real process that writes or claims a spool log and usually dies of SIGKILL,
so the test sees what any impolite death leaves behind. Records are ``record(i)``.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
from pathlib import Path

from klime_mp.spool import log as spool


def record(index: int, size: int = 0) -> bytes:
    head = b"rec-%08d" % index
    return head + bytes([index % 251]) * max(0, size - len(head))


def open_log(app: Path) -> spool.EventLog:
    return spool.EventLog.open(app, max_bytes=1 << 40, on_loss=lambda reason, lost: None)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def write_and_die(app: Path, count: str) -> None:
    log = open_log(app)
    for index in range(int(count)):
        log.append(record(index))
    die()


def write_until_killed(app: Path, size: str) -> None:
    # Large records: a SIGKILL that lands during the copy of one tears it (the kernel
    # stops a write between pages when a fatal signal is pending).
    log = open_log(app)
    index = 0
    while True:
        log.append(record(index, int(size)))
        index += 1
        if index == 3:
            print("ready", flush=True)


def hold(app: Path, count: str) -> None:
    """A live owner: write, say so, then wait (for SIGKILL or the end of stdin)."""
    log = open_log(app)
    for index in range(int(count)):
        log.append(record(index))
    print("ready", flush=True)
    sys.stdin.read()


def claim_and_die(app: Path, take: str, acknowledge: str) -> None:
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert len(orphan.take(int(take), 1 << 30)) == int(take)
    orphan.acknowledge(int(acknowledge))
    die()


def claimer(app: Path, out: str, threads: str) -> None:
    """Claim and read orphans until none is left, from several threads; every record read
    goes to ``out`` (one line each). Starts when stdin says go, so racers start together."""
    sys.stdin.readline()
    lines: list[bytes] = []
    guard = threading.Lock()

    def work() -> None:
        while (orphan := spool.claim_orphan(app)) is not None:
            while batch := orphan.take(7, 1 << 20):
                with guard:
                    lines.extend(batch)
                orphan.acknowledge(len(batch))
            orphan.release()

    workers = [threading.Thread(target=work) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    Path(out).write_bytes(b"".join(line + b"\n" for line in lines))


def fill_disk(app: Path, limit: str) -> None:
    """A disk that fills mid-record (RLIMIT_FSIZE): append until it fails, report how many
    records went in; the partial record must not stay in the file."""
    log = open_log(app)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of dying
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    index = 0
    try:
        while True:
            log.append(record(index, 300))
            index += 1
    except OSError as exc:
        print(f"{index} {exc.errno}", flush=True)
    die()


if __name__ == "__main__":
    name, app, *args = sys.argv[1:]
    globals()[name](Path(app), *args)
