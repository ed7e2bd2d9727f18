"""The end of a worker's life: ``shutdown`` sends what it can by its deadline and
reports the rest, each part with its own reason, before the process may exit.

A mixin of ``worker.Worker`` (the state is the worker's; the attributes it uses are
declared below): shutdown and its reporting read apart from the sending loop, which
they only stop and wait for.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from klime_mp.delivery import census
from klime_mp.delivery.accounting import Ledger, Stats
from klime_mp.delivery.deliverer import ANSWER_UNKNOWN, SHUTDOWN_TIMEOUT
from klime_mp.delivery.outage import OutageLog
from klime_mp.delivery.queue import MemoryQueue
from klime_mp.delivery.settle import give_up
from klime_mp.delivery.spooled import Spool
from klime_mp.delivery.transport import Transport
from klime_mp.options import Options

# After its deadline, shutdown() still waits this long for a report the sender is making
# (a batch it settled at that very moment): on_error has had every loss when it returns.
REPORT_GRACE_S = 1.0


class Source(Protocol):
    """What the sender reads batches from: the memory queue, the spool's log, an orphan."""

    def take(self, max_events: int, max_bytes: int) -> list[bytes]: ...
    def acknowledge(self, count: int) -> None: ...
    def rewind(self) -> None: ...
    def pending(self) -> int: ...


class Ending:
    _options: Options
    _lock: threading.Lock
    _progress: threading.Condition
    _ledger: Ledger
    _outage: OutageLog
    _memory: MemoryQueue
    _spool: Spool | None
    _transport: Transport
    _closed: bool
    _released: bool
    _deadline: float | None
    _accepted: int
    _loss_mark: int
    _reporting: int
    _wake: threading.Event
    _interrupt: threading.Event
    _send_lock: threading.Lock
    _thread: threading.Thread | None
    _in_flight: list[bytes] | None
    _in_flight_source: Source | None

    # The sending side's, in worker.Worker.
    def _drain_locked(self, deadline: float | None, full_batches_only: bool = False) -> None:
        raise NotImplementedError

    def _recover(self, deadline: float | None) -> None:
        raise NotImplementedError

    def _pending(self) -> int:
        raise NotImplementedError

    def _settled(self, target: int) -> bool:
        raise NotImplementedError

    def stats(self) -> Stats:
        raise NotImplementedError

    def spooled(self) -> int:
        raise NotImplementedError

    def shutdown(self, timeout: float) -> bool:
        """Send what is queued within ``timeout`` seconds, then stop. Idempotent.

        True when everything was delivered; False when some events were lost (they are
        reported to on_error and the log) or, with a spool, are left on disk for the
        next process of this app."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return self._pending() == 0
            self._closed = True
            self._deadline = deadline
            target = self._accepted
            mark = self._loss_mark
        self._wake.set()
        self._interrupt.set()  # a backoff wait re-checks the new deadline
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0))
        if self._send_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            try:  # the thread never ran (sync mode, interpreter exit) or died: send here
                self._drain_locked(deadline)
                self._recover(deadline)
            finally:
                self._send_lock.release()
        self._give_up_in_flight()
        self._give_up_on_rest()
        self._wait_reported(time.monotonic() + REPORT_GRACE_S)
        self._ledger.report_parked()
        if not (thread and thread.is_alive()):
            self._release_resources()
        with self._lock:
            return self._settled(target) and self._ledger.losses == mark

    # -- what shutdown could not send --------------------------------------------

    def _give_up_in_flight(self) -> None:
        """After the shutdown deadline (no spool): report the batch still being posted.

        An HTTP attempt that began before shutdown() has the client's full ``timeout``,
        not the deadline, and cannot be cut short; the process may exit right after
        shutdown() returns and take the sender with it, so the batch is reported here
        and the sender drops its late outcome. The server may still have stored it."""
        with self._lock:
            batch = self._in_flight if self._in_flight_source is self._memory else None
            if batch:
                self._in_flight = self._in_flight_source = None
                self._memory.acknowledge(len(batch))
        if batch:
            message = (
                f"{len(batch)} events sent, answer unknown at the shutdown deadline (the "
                "server may have them)"
            )
            self._give_up(batch, message, ANSWER_UNKNOWN)

    def _give_up_on_rest(self) -> None:
        """After the shutdown deadline (no spool): report what is still queued."""
        with self._lock:
            rest = self._memory.clear() if self._in_flight_source is not self._memory else []
        if rest:
            self._give_up(rest, f"{len(rest)} events not sent before the shutdown deadline")

    def _give_up(self, batch: list[bytes], message: str, reason: str = SHUTDOWN_TIMEOUT) -> None:
        give_up(self._ledger, batch, message, reason, self._outage.last_cause)
        self._notify_progress()

    def _release_resources(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._transport.close()
        if self._spool is not None:
            self._spool.close()
        census.retire(self)

    def _notify_progress(self) -> None:
        """Events settled (sent, reported lost or kept on disk): wake flush() waiters."""
        with self._progress:
            self._progress.notify_all()

    def _wait_reported(self, deadline: float) -> None:
        """Until the sender has finished settling the batches it took out of flight."""
        with self._progress:
            self._progress.wait_for(lambda: not self._reporting, deadline - time.monotonic())
