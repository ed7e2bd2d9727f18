"""Where every event ends up: this process's counters, and the reporting of each loss.

Every event a client accepts is, in the end, delivered or reported: counted by reason
in ``Stats.dropped``, logged with its count (at most once a second per reason, never
once per event) and passed to ``on_error`` with the events themselves. Losses noticed
on a caller's thread (a full queue) are only counted there and parked; the sender
reports them in one ``on_error`` call per reason, so ``track()`` stays cheap even in a
burst. The ledger never does I/O under its lock and never lets a callback's exception
out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from klime_mp.errors import LossReport
from klime_mp.options import Options

DROP_WARNING_INTERVAL_S = 1.0
# Events parked for a deferred report, per reason: beyond this only their count is
# kept (the report says how many are not attached), so a long overflow cannot grow
# memory without bound.
MAX_PARKED_EVENTS = 1_000
# deliverer.ANSWER_UNKNOWN (which imports this module): sent, but no answer came back.
UNCONFIRMED = "answer_unknown"


@dataclass(frozen=True)
class Stats:
    """A consistent snapshot of one client's counters in the current process."""

    enqueued: int = 0  # accepted by track/identify/group
    sent: int = 0  # accepted by the server
    failed: int = 0  # taken for sending but not delivered (see ``dropped``)
    retries: int = 0  # extra HTTP attempts
    batches: int = 0  # batches the server took (HTTP 200)
    queued: int = 0  # waiting now (in memory, or on disk with a spool)
    dropped: dict[str, int] = field(default_factory=dict)  # every lost event, by reason
    recovered: int = 0  # events of dead processes claimed from the spool and sent
    resent: int = 0  # of those, events the dead process had sent too (may be duplicates)
    failed_requests: int = 0  # HTTP attempts that failed (no answer, or not a 200), live
    last_success_at: float | None = None  # time.time() when the server last took a batch
    last_error: str | None = None  # the last failed attempt's cause, in plain words
    spool_failures: int = 0  # times the spool stopped working (full, read-only, removed)


class Ledger:
    """One per worker (so per client per process). Thread-safe."""

    def __init__(self, options: Options) -> None:
        self._options = options
        self._log = options.logger
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0, "retries": 0, "batches": 0}
        self._counts.update(recovered=0, resent=0, failed_requests=0, spool_failures=0)
        self._last_success_at: float | None = None
        self._last_error: str | None = None
        self._dropped: dict[str, int] = {}
        self._last_warning: dict[str, float] = {}
        self._parked: dict[str, tuple[int, list[bytes]]] = {}  # reason -> (count, events)
        self._notices: list[BaseException] = []  # for on_error, no event lost (see notice)
        self.losses = 0  # every lost event so far: flush() compares it to say "all sent"

    # -- counting ----------------------------------------------------------------------

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._counts[name] += count

    def delivered(self, count: int, retries: int) -> None:
        with self._lock:
            self._counts["sent"] += count
            self._counts["batches"] += 1
            self._counts["retries"] += retries
            self._last_success_at = time.time()

    def request_failed(self, cause: str) -> None:
        """One HTTP attempt failed: counted as it happens, not when its batch settles."""
        with self._lock:
            self._counts["failed_requests"] += 1
            self._last_error = cause

    def snapshot(self, *, queued: int, enqueued: int) -> Stats:
        """The counters, with the two the worker keeps under its own lock."""
        with self._lock:
            return Stats(
                enqueued=enqueued,
                queued=queued,
                dropped=dict(self._dropped),
                last_success_at=self._last_success_at,
                last_error=self._last_error,
                **self._counts,
            )

    # -- losses --------------------------------------------------------------------------

    def lost(
        self, reason: str, error: BaseException, events: list[bytes], *, failed: bool = False
    ) -> None:
        """Events lost for good, reported now from this thread: counted, logged at most
        once a second per reason, and passed to ``on_error``. ``failed``: they had been
        taken for sending (they count in ``Stats.failed`` too)."""
        self.report(reason, error, decode(events), len(events), failed=failed)

    def report(
        self,
        reason: str,
        error: BaseException,
        events: list[dict[str, Any]],
        count: int,
        *,
        failed: bool = False,
    ) -> None:
        """``lost`` for events already decoded (or known only by ``count``)."""
        self._count(reason, count, failed=failed)
        if reason == UNCONFIRMED:  # not a loss as far as anyone knows: no ERROR for it
            self._warn(reason, f"{count} events unconfirmed ({reason}): {error}", logging.WARNING)
        else:
            self._warn(reason, f"{count} events lost ({reason}): {error}")
        self.call("on_error", error, events)

    def count_only(self, reason: str, count: int) -> None:
        """Events lost that cannot be handed to ``on_error`` (a record torn on disk):
        counted and logged only."""
        self._count(reason, count)
        self._warn(reason, f"{count} events lost ({reason})")

    def count_failed(self, reason: str, count: int, retries: int) -> None:
        """A synchronous send that failed: its caller gets the error, not ``on_error``."""
        self._count(reason, count, failed=True)
        self.add("retries", retries)

    def filtered(self, reason: str) -> None:
        """An event the app chose not to send (its before_send returned None): counted
        under ``reason``, but not a loss: no log, no on_error, flush() stays True."""
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def park(self, reason: str, data: bytes) -> None:
        """A loss noticed on a caller's thread: count it now, report it later
        (``report_parked``, from the sender), so the caller pays only a list append."""
        self._count(reason, 1)
        with self._lock:
            count, events = self._parked.get(reason, (0, []))
            if len(events) < MAX_PARKED_EVENTS:
                events.append(data)
            self._parked[reason] = (count + 1, events)

    def notice(self, error: BaseException) -> None:
        """An outage that loses no event (the spool fell back to memory): passed to
        ``on_error`` with no events by the sender (``report_parked``), never from a
        caller's thread, which may hold the worker's lock a callback could need."""
        with self._lock:
            self._notices.append(error)

    def report_parked(self) -> None:
        """Report every parked loss, one ``on_error`` call per reason, and notices."""
        with self._lock:
            parked, self._parked = self._parked, {}
            notices, self._notices = self._notices, []
        for notice in notices:
            self.call("on_error", notice, [])
        for reason, (count, events) in parked.items():
            message = f"{count} events dropped ({reason})"
            if count > len(events):
                message += f"; the first {len(events)} are attached"
            self._warn(reason, message)
            self.call("on_error", LossReport(message, reason, count), decode(events))

    def _count(self, reason: str, count: int, *, failed: bool = False) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + count
            if failed:
                self._counts["failed"] += count
            self.losses += count

    def _warn(self, reason: str, message: str, level: int = logging.ERROR) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning.get(reason, -DROP_WARNING_INTERVAL_S) < (
                DROP_WARNING_INTERVAL_S
            ):
                return
            self._last_warning[reason] = now
            total = self._dropped.get(reason, 0)
        word = "lost" if level == logging.ERROR else "unconfirmed"
        self._log.log(level, "Klime: %s (%d %s so far in this process)", message, total, word)

    # -- callbacks ---------------------------------------------------------------------

    def call(self, name: str, *args: Any) -> None:
        """Run a user callback; its exception is logged, never raised (the sender must
        not die of it, and a caller's ``track()`` must not fail because of it)."""
        callback = getattr(self._options, name)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self._log.exception("Klime: %s callback raised", name)


def decode(batch: list[bytes]) -> list[dict[str, Any]]:
    """The events of a batch as dicts, for on_error and SendError (the slow path only)."""
    return [json.loads(item) for item in batch]
