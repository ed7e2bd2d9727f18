"""Every worker of this process, and the counts of those already shut down: what the
metrics (``klime_mp.metrics``) read at collection time, summed over the clients.

A worker enrolls when it is built and retires when its shutdown releases it; its last
counts are kept then, so a counter summed over the process never goes down when a
client is replaced (``configure()`` again) or shut down. Counts belong to the process
that made them: a forked child starts from zero, and what it inherited is skipped.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from klime_mp.delivery.accounting import Stats
from klime_mp.options import Options
from klime_mp.spool import log as spool
from klime_mp.spool.files import list_directory


class Counted(Protocol):
    _options: Options

    def stats(self) -> Stats: ...
    def spooled(self) -> int: ...


@dataclass
class Totals:
    """The process's counts, summed over its clients (live and retired)."""

    accepted: int = 0
    delivered: int = 0
    failed_requests: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    spooled: int = 0
    spool_dirs: set[Path] = field(default_factory=set)

    def add(self, stats: Stats) -> None:
        self.accepted += stats.enqueued
        self.delivered += stats.sent
        self.failed_requests += stats.failed_requests
        for reason, count in stats.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count


# One lock per process, created there: a forked child must never wait on a lock that a
# parent's thread (a metrics exporter collecting) held at the fork.
_locks: dict[int, threading.Lock] = {}
_live: dict[int, weakref.WeakSet[Counted]] = {}  # by PID
_retired: dict[int, Totals] = {}


def _lock() -> threading.Lock:
    pid = os.getpid()
    lock = _locks.get(pid)
    return lock if lock is not None else _locks.setdefault(pid, threading.Lock())


def enroll(worker: Counted) -> None:
    if not worker._options.metrics:  # a client that asked to stay out of the metrics
        return
    with _lock():
        _live.setdefault(os.getpid(), weakref.WeakSet()).add(worker)


def retire(worker: Counted) -> None:
    pid = os.getpid()
    with _lock():
        live = _live.get(pid)
        if live is None or worker not in live:
            return
        live.discard(worker)
        _retired.setdefault(pid, Totals()).add(worker.stats())


def totals() -> Totals:
    """This process's counts now: what its live clients hold plus what retired ones
    left. Reads the spool directories' sizes (one directory listing each)."""
    pid = os.getpid()
    with _lock():
        retired = _retired.get(pid, Totals())
        found = Totals(dropped=dict(retired.dropped))
        found.add(Stats(enqueued=retired.accepted, sent=retired.delivered))
        found.failed_requests = retired.failed_requests
        for worker in list(_live.get(pid, ())):
            found.add(stats := worker.stats())
            found.queued += stats.queued
            found.spooled += worker.spooled()
            options = worker._options
            if options.spool_dir is not None:
                app = spool.app_directory(options.spool_dir, options.endpoint, options.write_key)
                found.spool_dirs.add(Path(app))
    return found


def spool_bytes(dirs: set[Path]) -> int:
    """Bytes of segment files in ``dirs`` (every process's logs of those apps)."""
    total = 0
    for app_dir in dirs:
        try:
            total += list_directory(str(app_dir)).total_bytes()
        except OSError:  # not created yet, or removed: nothing on disk
            continue
    return total
