"""Saying what is wrong with delivery: once per outage, in plain words, and again when
it ends; and a warning when events have waited too long with nothing delivered.

An outage is the process's, like its backoff (``deliverer``): it begins with the first
failed attempt after a success (or after start) and ends with the next success,
whatever the number of batches that wait in between. So the log gets one WARNING when
it begins (the cause, how many events wait) and one INFO when it ends (how long it
lasted, what was delivered then), never a line per batch or per retry. Every failed
attempt is still counted as it happens (``Stats.failed_requests``, ``last_error``).
"""

from __future__ import annotations

import time
from typing import Callable

from klime_mp.delivery.accounting import Ledger
from klime_mp.delivery.transport import Attempt
from klime_mp.options import Options


class OutageLog:
    """One per worker; used by its one sending thread at a time."""

    def __init__(self, options: Options, ledger: Ledger, waiting: Callable[[], int]) -> None:
        self._log = options.logger
        self._ledger = ledger
        self._waiting = waiting  # events not yet delivered (read only to log it)
        self._stall_after = options.stall_warning
        self._began: float | None = None  # monotonic start of the current outage
        self._failures = 0
        self.last_cause: str | None = None  # of the last failed attempt
        self._idle_since = time.monotonic()  # the last delivery, or the start
        self._stall_warned = False

    def attempt_failed(self, attempt: Attempt) -> None:
        cause = self.refused(attempt)
        self._failures += 1
        if self._began is not None:
            return
        self._began = time.monotonic()
        self._log.warning(
            "Klime: cannot deliver events: %s; retrying with backoff (events waiting: %d)",
            cause,
            self._waiting(),
        )

    def refused(self, attempt: Attempt) -> str:
        """A failed attempt, counted. Alone (not through ``attempt_failed``): an answer
        about the batch's data, no outage; its loss is logged where it is reported."""
        cause = attempt.cause or attempt.error or f"HTTP {attempt.status}"
        self.last_cause = cause
        self._ledger.request_failed(cause)
        return cause

    def delivered(self, events: int) -> None:
        """A batch of ``events`` was taken by the server."""
        self._idle_since = time.monotonic()
        self._stall_warned = False
        began, self._began = self._began, None
        if began is None:
            return
        self._log.info(
            "Klime: delivering again after %.1f s (%d failed attempts, last: %s); "
            "delivered now: %d, still waiting: %d",
            time.monotonic() - began,
            self._failures,
            self.last_cause,
            events,
            max(self._waiting() - events, 0),
        )
        self._failures = 0

    def check_stall(self) -> None:
        """Warn once when events have waited ``stall_warning`` seconds with nothing
        delivered (called by the sender whenever it wakes, and during backoff waits)."""
        if self._stall_warned:
            return
        idle = time.monotonic() - self._idle_since
        if idle < self._stall_after:
            return
        waiting = self._waiting()
        if waiting == 0:
            self._idle_since = time.monotonic()  # nothing waits: not a stall
            return
        self._stall_warned = True
        self._log.warning(
            "Klime: nothing delivered for %.0f s (events waiting: %d; last error: %s)",
            idle,
            waiting,
            self.last_cause or "none",
        )
