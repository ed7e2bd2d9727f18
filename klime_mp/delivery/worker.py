"""The per-process queue and the background thread that sends it.

A ``Worker`` belongs to exactly one process (``forksafe`` builds a new one in every
child). ``enqueue`` is the only thing a caller's thread does: take a short lock, append
the encoded event (to the spool's file first, when there is one), maybe wake the
sender. The lock is never held during network work, so a caller never waits on the
network. Everything that touches the network happens under ``_send_lock``, in the
sender thread (or, in sync mode and at exit when no thread can run, in the calling
thread). Where each event ends up is the ``Ledger``'s business.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

from klime_mp.delivery import census
from klime_mp.delivery import spooled as recovery
from klime_mp.delivery.accounting import Ledger, Stats
from klime_mp.delivery.deliverer import (
    DEADLINE_REASONS,
    INTERNAL_ERROR,
    REJECTED,
    Deliverer,
    Delivery,
)
from klime_mp.delivery.ending import Ending, Source
from klime_mp.delivery.outage import OutageLog
from klime_mp.delivery.queue import MemoryQueue
from klime_mp.delivery.settle import settle, settle_sync
from klime_mp.delivery.split import Splitter
from klime_mp.delivery.transport import Transport
from klime_mp.errors import DeliveryError, LossReport, SendError
from klime_mp.options import DEFAULT_FLUSH_TIMEOUT_S, Options
from klime_mp.responses import BatchResponse
from klime_mp.wire import BATCH_BYTES, batch_body

# flush() without a timeout waits at most this long: an outage cannot hold a caller
# (PostHog bounds its flush the same way). The events stay queued either way.

# Loss reasons before sending, keys of ``Stats.dropped`` beside the delivery's.
QUEUE_FULL = "queue_full"
OVERSIZED = "oversized"
AFTER_SHUTDOWN = "after_shutdown"

__all__ = ["OVERSIZED", "Stats", "Worker"]


class Worker(Ending):
    def __init__(self, options: Options) -> None:
        self._options = options
        self._lock = threading.Lock()  # queues and sequence numbers; never held over I/O
        self._progress = threading.Condition(self._lock)  # flush() waits here
        self._ledger = Ledger(options)
        self._memory = MemoryQueue()
        self._spool = recovery.Spool.open(options, self._ledger)  # None without spool_dir
        # Events accepted so far (Stats.enqueued). Events settle in the order they were
        # accepted (one sender, batches from the front), so the first N of them are
        # settled exactly when no more than (accepted - N) are pending: flush() waits on
        # that. (With send=False nothing is ever pending.)
        self._accepted = 0
        self._loss_mark = 0  # the ledger's loss count when flush() last returned
        self._closed = False
        self._flush_requests = 0  # flush() calls so far; the sender serves them in order
        self._deadline: float | None = None  # set by shutdown; bounds every send
        self._wake = threading.Event()
        self._interrupt = threading.Event()
        self._send_lock = threading.Lock()  # one sender at a time
        # The batch being posted and where it came from; whoever clears it settles it:
        # the sender, or shutdown when the deadline passes first (_give_up_in_flight).
        self._in_flight: list[bytes] | None = None
        self._in_flight_source: Source | None = None
        self._reporting = 0  # batches the sender took out of flight and is settling
        self._thread: threading.Thread | None = None
        self._transport = Transport(options)
        durable = self._spool is not None
        self._outage = OutageLog(options, self._ledger, self.size)
        self._deliverer = Deliverer(
            options,
            self._transport,
            self._interrupt,
            durable=durable,
            while_waiting=self._housekeeping,
            outage=self._outage,
        )
        self._splitter = Splitter(options.logger)
        self._released = False
        census.enroll(self)  # read by the metrics at collection time

    # -- the caller's side: no network here --------------------------------------------

    def enqueue(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                reason: str | None = AFTER_SHUTDOWN
            elif not self._options.send or (self._spool is not None and self._spool.append(data)):
                reason = None
            elif self._memory.waiting() >= self._options.max_queue_size:
                reason = QUEUE_FULL
            else:
                reason = None
                self._memory.append(data)
            if reason is None:
                self._accepted += 1
                waiting = self._waiting()
        if reason == AFTER_SHUTDOWN:  # nobody will send again: report from here
            error = LossReport("an event was tracked after shutdown()", reason, 1)
            self._ledger.lost(reason, error, [data])
            return
        if reason is not None:
            self._ledger.park(reason, data)  # the sender reports it; track() stays cheap
            self._wake.set()
            return
        if waiting >= self._options.max_batch_size:
            if self._options.sync_mode:
                self._drain()  # documented cost of sync mode: the caller sends
            elif not self._wake.is_set():
                self._wake.set()
        if not self._options.sync_mode and self._thread is None:
            self._start_thread()

    def refuse(self, reason: str, error: BaseException, events: list[dict[str, Any]]) -> None:
        """Events dropped before they reached the queue (oversized): count, log and
        report them, the caller's thread running ``on_error`` like the sender would."""
        self._ledger.report(reason, error, events, len(events))

    def filtered(self, reason: str) -> None:
        """An event the app's before_send dropped: counted, not a loss."""
        self._ledger.filtered(reason)

    def size(self) -> int:
        with self._lock:
            return self._pending()

    def stats(self) -> Stats:
        with self._lock:
            pending, accepted = self._pending(), self._accepted
        return self._ledger.snapshot(queued=pending, enqueued=accepted)

    def spooled(self) -> int:
        """Events of this worker waiting on disk (0 without a spool)."""
        with self._lock:
            return 0 if self._spool is None else self._spool.pending()

    # -- waiting for delivery -----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event accepted before this call is settled, at most
        ``timeout`` seconds (``DEFAULT_FLUSH_TIMEOUT_S`` when None).

        True only when all of them were delivered and no event was lost since the
        previous flush() returned; False when any was lost or is still waiting (it
        stays queued: the sender carries on)."""
        wait = DEFAULT_FLUSH_TIMEOUT_S if timeout is None else timeout
        return self.begin_flush()(time.monotonic() + wait)

    def begin_flush(self) -> Callable[[float], bool]:
        """Ask the sender to send everything accepted so far; return the wait for it
        (called with a deadline). Split in two so that a process-wide flush can start
        every client's sender before it waits for any (``forksafe.flush_process``)."""
        with self._lock:
            target = self._accepted
            mark = self._loss_mark
            threaded = self._sender_alive()
            if threaded:
                self._flush_requests += 1  # tells the sender to send partial batches too
        if threaded:
            self._wake.set()

        def wait(deadline: float) -> bool:
            if threaded:
                settled = self._wait_finished(target, deadline)
            else:  # no thread here (sync mode, exit): send from this thread
                self._drain(deadline)
                self._ledger.report_parked()
                with self._lock:
                    settled = self._settled(target)
            with self._lock:
                self._loss_mark = self._ledger.losses
                return settled and self._ledger.losses == mark

        return wait

    def abandon(self) -> None:
        """In a forked child: let go of the parent's worker without touching its
        locks (they may be held forever), its connection or its spool files."""
        self._transport.abandon()
        if self._spool is not None:
            self._spool.abandon()

    # -- the sender's side ----------------------------------------------------------------

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="klime-sender", daemon=True)
        try:
            self._thread.start()
        except RuntimeError:
            # "can't create new thread at interpreter shutdown" (3.12+): the exit flush
            # sends from the calling thread instead, so nothing is lost.
            self._options.logger.debug("Klime: sender thread not started; sending at exit")

    def _sender_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        # Woken by a full batch, send full batches only: under load the remainder fills
        # the next one, and a request per full batch costs the app's CPU far less than
        # a request per wake-up (measured under Gunicorn: 5.5 events per POST when every
        # wake drained everything). Everything goes on flush(), shutdown, and when the
        # interval falls due, so no event waits longer than flush_interval.
        interval = self._options.flush_interval
        due = time.monotonic() + interval
        scan_due = time.monotonic()  # orphans of dead processes: at once, then now and then
        flushes_served = 0
        while True:
            now = time.monotonic()
            self._wake.wait(max(min(due, scan_due) - now, 0.0))
            self._wake.clear()
            self._housekeeping()
            flushes_asked = self._flush_requests
            if self._closed or flushes_asked != flushes_served or time.monotonic() >= due:
                self._drain(self._deadline)
                flushes_served = flushes_asked
                due = time.monotonic() + interval
            else:
                self._drain(self._deadline, full_batches_only=True)
            if time.monotonic() >= scan_due:
                with self._send_lock:
                    self._recover(self._deadline)
                scan_due = time.monotonic() + recovery.SCAN_INTERVAL_S
            if self._closed and (self._waiting() == 0 or self._past_deadline()):
                break
        if self._closed:
            self._release_resources()

    def _housekeeping(self) -> None:
        """Between sends and during long backoff waits: report parked losses, watch
        for events that have waited too long."""
        self._ledger.report_parked()
        self._outage.check_stall()

    def _past_deadline(self) -> bool:
        deadline = self._deadline
        return deadline is not None and time.monotonic() >= deadline

    def _drain(self, deadline: float | None = None, *, full_batches_only: bool = False) -> None:
        with self._send_lock:
            self._drain_locked(deadline, full_batches_only)

    def _drain_locked(self, deadline: float | None, full_batches_only: bool = False) -> None:
        while True:
            limit = self._nearer_deadline(deadline)
            if limit is not None and time.monotonic() >= limit:
                return
            source, batch = self._take_batch(full_batches_only)
            if source is None:
                return
            settled = self._deliver(source, batch, deadline)
            self._ledger.report_parked()
            if not settled:
                return  # kept for later (on disk, or a deadline came first): stop here

    def _take_batch(self, full_batches_only: bool) -> tuple[Source | None, list[bytes]]:
        """The next batch: the spool's events first, then memory's (a failed disk).

        The spool's outside ``_lock``: under it, each of its system calls (the sent mark's
        pwrite) made track() wait for the GIL. Only this thread moves the spool's cursor
        and shutdown never gives up a spool batch, so it needs no owner meanwhile."""
        size = self._options.max_batch_size
        with self._lock:
            waiting = self._waiting()
            if waiting < (size if full_batches_only else 1):
                return None, []
            spool = self._spool
            if spool is None or spool.waiting() <= 0:
                batch = self._memory.take(size, BATCH_BYTES)
                self._in_flight, self._in_flight_source = batch, self._memory
                return self._memory, batch
        batch = spool.take(size, BATCH_BYTES)
        with self._lock:
            self._in_flight, self._in_flight_source = batch, spool
        return spool, batch

    def _deliver(self, source: Source, batch: list[bytes], deadline: float | None) -> bool:
        """Post one batch and settle it, part by part when the server makes us split it
        (``split``); False when the rest was kept (on disk, or queued at a flush's
        deadline) unsent.

        Each part is acknowledged at its source as soon as it is settled, the parts
        being consecutive from the front: the records of a split batch leave the spool
        only as their halves are delivered or refused, and a rewind puts back only the
        rest. ``_in_flight`` follows what is still unsettled, for shutdown. The spool is
        settled after ``_lock`` is released (its pwrite and unlinks: see _take_batch),
        inside ``_reporting`` so that shutdown waits for it."""
        post = functools.partial(self._post, deadline=deadline)
        rest = batch
        outside = source is self._spool
        for part, delivery in self._splitter.parts(post, batch):
            with self._lock:
                if self._in_flight is not rest:
                    return True  # shutdown gave it up at its deadline and reported it already
                kept = delivery.response is None and self._keeps(source, delivery)
                if kept:
                    self._in_flight = self._in_flight_source = None
                    if not outside:
                        source.rewind()
                else:
                    if not outside:
                        source.acknowledge(len(part))
                    rest = rest[len(part) :]
                    self._in_flight = rest or None
                    self._in_flight_source = source if rest else None
                    self._reporting += 1
            if kept and outside:
                source.rewind()  # on disk still: a later attempt or the next process
            if not kept:
                try:
                    if outside:
                        source.acknowledge(len(part))
                    self._settle(part, delivery)
                finally:
                    with self._lock:
                        self._reporting -= 1
            self._notify_progress()
            if kept:
                return False
        return True

    def _keeps(self, source: Source, delivery: Delivery) -> bool:
        """Events from the spool are lost only to a refusal; the rest waits on disk.
        Before shutdown, a deadline can only be a flush's: its batch stays queued."""
        reason = None if delivery.error is None else delivery.error.reason
        if reason in DEADLINE_REASONS and not self._closed:
            return True
        return source is self._spool and reason != REJECTED

    def _settle(self, batch: list[bytes], delivery: Delivery) -> None:
        settle(self._ledger, batch, delivery)

    def _recover(self, deadline: float | None) -> None:
        """Send what dead processes of this app left in the spool. Caller holds
        _send_lock. Not during an outage: they wait on disk, as ours do."""
        if self._spool is not None and not self._deliverer.in_outage:
            whole = functools.partial(self._splitter.whole, self._post)
            self._spool.recover(whole, self._settle, deadline)

    def send_now(self, data: bytes) -> BatchResponse:
        """Send one event from the calling thread (the ``*_sync`` methods); callbacks are
        not called, as in the official SDK: the caller gets the result directly."""
        if self._closed:
            raise SendError("Client is shutdown", [])
        if not self._options.send:
            return BatchResponse(status="not_sent", accepted=0, failed=0)
        with self._send_lock:
            delivery = self._post([data])
        return settle_sync(self._ledger, data, delivery)

    def _post(self, batch: list[bytes], deadline: float | None = None) -> Delivery:
        """Send one batch, retrying until ``deadline`` (a flush's, when it sends from
        the caller's thread) or shutdown's. Caller holds _send_lock."""
        body = batch_body(batch)
        try:
            limit = functools.partial(self._nearer_deadline, deadline)
            return self._deliverer.send(body, limit, len(batch))
        except Exception as exc:  # a bug or an exotic failure must not kill the thread
            self._options.logger.exception("Klime: unexpected error while sending a batch")
            error = DeliveryError(f"unexpected error while sending: {exc!r}", INTERNAL_ERROR)
            return Delivery(None, error, 0)

    def _nearer_deadline(self, deadline: float | None) -> float | None:
        """``deadline`` or shutdown's, whichever comes first (None: neither). Read anew
        each time: shutdown() may set its deadline while a drain or a send runs."""
        return min((d for d in (deadline, self._deadline) if d is not None), default=None)

    # -- bookkeeping ----------------------------------------------------------------------

    def _waiting(self) -> int:
        """Events not yet taken for sending. Caller holds _lock."""
        spooled = self._spool.waiting() if self._spool is not None else 0
        return self._memory.waiting() + spooled

    def _pending(self) -> int:
        """Events accepted and not yet settled. Caller holds _lock."""
        spooled = self._spool.pending() if self._spool is not None else 0
        return self._memory.pending() + spooled

    def _settled(self, target: int) -> bool:
        """The first ``target`` accepted events are all settled. Caller holds _lock."""
        return self._pending() <= self._accepted - target

    def _wait_finished(self, target: int, deadline: float) -> bool:
        with self._progress:
            settled = functools.partial(self._settled, target)
            return self._progress.wait_for(settled, deadline - time.monotonic())
