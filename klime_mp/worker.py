"""The per-process queue and the background thread that sends it.

A ``Worker`` belongs to exactly one process (``forksafe`` builds a new one in every
child). ``enqueue`` is the only thing a caller's thread does: take a short lock, append
bytes, maybe wake the sender. The lock is never held during network work, so a caller
never waits on the network. Everything that touches the network happens in ``_drain``,
under ``_send_lock``, in the sender thread (or, in sync mode and at exit when no thread
can run, in the calling thread).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from klime_mp.delivery import (
    REJECTED,
    RETRIES_EXHAUSTED,
    SHUTDOWN_TIMEOUT,
    Deliverer,
    Delivery,
    DeliveryError,
)
from klime_mp.options import Options
from klime_mp.responses import BatchResponse, SendError
from klime_mp.transport import Transport

MAX_BODY_BYTES = 10 * 1024 * 1024
_BODY_OVERHEAD = len(b'{"batch":[]}')
DROP_WARNING_INTERVAL_S = 1.0

# Loss reasons before sending, keys of ``Stats.dropped`` beside the transport's.
QUEUE_FULL = "queue_full"
OVERSIZED = "oversized"
AFTER_SHUTDOWN = "after_shutdown"


@dataclass(frozen=True)
class Stats:
    """A consistent snapshot of one client's counters in the current process."""

    enqueued: int = 0  # accepted by track/identify/group into the queue
    sent: int = 0  # accepted by the server
    failed: int = 0  # taken from the queue but not delivered (see ``dropped``)
    retries: int = 0  # extra HTTP attempts
    batches: int = 0  # batches the server took (HTTP 200)
    queued: int = 0  # waiting now
    dropped: dict[str, int] = field(default_factory=dict)  # every lost event, by reason


class Worker:
    def __init__(self, options: Options) -> None:
        self._options = options
        self._log = options.logger
        self._lock = threading.Lock()  # queue and counters; never held over I/O
        self._progress = threading.Condition(self._lock)  # flush() waits here
        self._queue: deque[bytes] = deque()
        self._appended = 0  # sequence number of the newest queued event
        self._finished = 0  # events taken from the queue and settled (sent or failed)
        self._counts: dict[str, int] = {
            "enqueued": 0,
            "sent": 0,
            "failed": 0,
            "retries": 0,
            "batches": 0,
        }
        self._dropped: dict[str, int] = {}
        self._last_drop_warning = 0.0
        self._closed = False
        self._flush_requests = 0  # flush() calls so far; the sender serves them in order
        self._deadline: float | None = None  # set by shutdown; bounds every send
        self._wake = threading.Event()
        self._interrupt = threading.Event()
        self._send_lock = threading.Lock()  # one sender at a time
        # The batch being posted; whoever clears it settles it: the sender, or shutdown
        # when the deadline passes first (see _give_up_in_flight).
        self._in_flight: list[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._transport = Transport(options)
        self._deliverer = Deliverer(options, self._transport, self._interrupt)

    # -- the caller's side: no I/O here -------------------------------------------

    def enqueue(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                reason: str | None = AFTER_SHUTDOWN
            elif len(self._queue) >= self._options.max_queue_size:
                reason = QUEUE_FULL
            else:
                reason = None
                self._counts["enqueued"] += 1
                if self._options.send:
                    self._queue.append(data)
                    self._appended += 1
                size = len(self._queue)
        if reason is not None:
            self.count_drop(reason, 1)
            return
        if size >= self._options.max_batch_size:
            if self._options.sync_mode:
                self._drain()  # documented cost of sync mode: the caller sends
            elif not self._wake.is_set():
                self._wake.set()
        if not self._options.sync_mode and self._thread is None:
            self._start_thread()

    def count_drop(self, reason: str, count: int, *, warn: bool = True) -> None:
        """Count lost events; warn at most once a second, never once per event."""
        now = time.monotonic()
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + count
            total = self._dropped[reason]
            warn = warn and now - self._last_drop_warning >= DROP_WARNING_INTERVAL_S
            if warn:
                self._last_drop_warning = now
        if warn:
            self._log.warning(
                "Klime: dropping events (%s; %d so far in this process)", reason, total
            )

    def refuse(self, reason: str, error: BaseException, events: list[dict[str, Any]]) -> None:
        """Events dropped before they reached the queue (oversized): count, log and
        report them, the caller's thread running ``on_error`` like the sender would."""
        self.count_drop(reason, len(events))
        self._log.error("Klime: event dropped: %s", error)
        self._call("on_error", error, events)

    def size(self) -> int:
        return len(self._queue)

    def stats(self) -> Stats:
        with self._lock:
            return Stats(queued=len(self._queue), dropped=dict(self._dropped), **self._counts)

    # -- waiting for delivery -------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued before this call is settled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._appended
        if self._sender_alive():
            with self._lock:
                self._flush_requests += 1  # tells the sender to send partial batches too
            self._wake.set()
            return self._wait_finished(target, deadline)
        self._drain(deadline)  # no thread here (sync mode, exit): send from this thread
        return self._finished >= target

    def shutdown(self, timeout: float) -> bool:
        """Send what is queued within ``timeout`` seconds, then stop. Idempotent.

        True when everything queued was delivered; False when some events failed or
        were given up at the deadline (those are reported to on_error and the log)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return not self._queue
            self._closed = True
            self._deadline = deadline
            target = self._appended
            failed_before = self._counts["failed"]
        self._wake.set()
        self._interrupt.set()  # a backoff sleep re-checks the new deadline
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0))
        if self._queue and self._send_lock.acquire(timeout=max(deadline - time.monotonic(), 0)):
            try:  # the thread never ran (sync mode, interpreter exit) or died: send here
                self._drain_locked(deadline)
            finally:
                self._send_lock.release()
        self._give_up_in_flight()
        self._give_up_on_rest()
        if not (thread and thread.is_alive()):
            self._transport.close()
        return self._finished >= target and self._counts["failed"] == failed_before

    def abandon(self) -> None:
        """In a forked child: let go of the parent's worker without touching its
        locks (they may be held forever) or its peer's connection state."""
        self._transport.abandon()

    # -- the sender's side ------------------------------------------------------------

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
            self._log.debug("Klime: sender thread not started; sending at exit instead")

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
        flushes_served = 0
        while True:
            self._wake.wait(max(due - time.monotonic(), 0.0))
            self._wake.clear()
            flushes_asked = self._flush_requests
            if self._closed or flushes_asked != flushes_served or time.monotonic() >= due:
                self._drain(self._deadline)
                flushes_served = flushes_asked
                due = time.monotonic() + interval
            else:
                self._drain(self._deadline, full_batches_only=True)
            if self._closed and not self._queue:
                return

    def _drain(self, deadline: float | None = None, *, full_batches_only: bool = False) -> None:
        with self._send_lock:
            self._drain_locked(deadline, full_batches_only)

    def _drain_locked(self, deadline: float | None, full_batches_only: bool = False) -> None:
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if full_batches_only and len(self._queue) < self._options.max_batch_size:
                return
            batch = self._take_batch()
            if not batch:
                return
            self._deliver(batch)

    def _take_batch(self) -> list[bytes]:
        budget = MAX_BODY_BYTES - _BODY_OVERHEAD
        batch: list[bytes] = []
        with self._lock:
            queue = self._queue
            while queue and len(batch) < self._options.max_batch_size:
                cost = len(queue[0]) + 1  # the comma
                if cost > budget:
                    break
                budget -= cost
                batch.append(queue.popleft())
            if batch:
                self._in_flight = batch  # with the pop: no moment when nobody owns it
        return batch

    def _deliver(self, batch: list[bytes]) -> None:
        delivery = self._post(batch)
        with self._lock:
            mine = self._in_flight is batch
            self._in_flight = None
        if not mine:
            return  # shutdown gave it up at its deadline and reported it already
        self._settle(len(batch), delivery)
        if delivery.response is not None:
            self._call("on_success", delivery.response)
        else:
            assert delivery.error is not None
            self._call("on_error", delivery.error, decode(batch))
        self._mark_finished(len(batch))

    def send_now(self, data: bytes) -> BatchResponse:
        """Send one event from the calling thread (the ``*_sync`` methods); callbacks are
        not called, as in the official SDK: the caller gets the result directly."""
        if self._closed:
            raise SendError("Client is shutdown", [])
        if not self._options.send:
            return BatchResponse(status="not_sent", accepted=0, failed=0)
        with self._send_lock:
            delivery = self._post([data])
            self._settle(1, delivery)
        if delivery.response is None:
            raise SendError(str(delivery.error), decode([data]))
        return delivery.response

    def _post(self, batch: list[bytes]) -> Delivery:
        """Send one batch. Caller holds _send_lock."""
        body = b'{"batch":[' + b",".join(batch) + b"]}"
        try:
            return self._deliverer.send(body, self._current_deadline)
        except Exception as exc:  # a bug or an exotic failure must not kill the thread
            self._log.exception("Klime: unexpected error while sending a batch")
            return Delivery(None, exc, 0)

    def _settle(self, count: int, delivery: Delivery) -> None:
        """Count the outcome of a batch of ``count`` events; log a failure."""
        if delivery.response is not None:
            self._count_delivered(count, delivery.response, delivery.retries)
        else:
            assert delivery.error is not None
            reason = getattr(delivery.error, "reason", RETRIES_EXHAUSTED)
            self._count_failed(count, reason, delivery.retries)
            self._log.error(
                "Klime: %d events not delivered (%s): %s", count, reason, delivery.error
            )

    def _current_deadline(self) -> float | None:
        return self._deadline

    def _count_delivered(self, count: int, response: BatchResponse, retries: int) -> None:
        rejected = min(max(response.failed, 0), count)
        with self._lock:
            self._counts["sent"] += count - rejected
            self._counts["batches"] += 1
            self._counts["retries"] += retries
        if rejected:
            self.count_drop(REJECTED, rejected)
            self._log.warning(
                "Klime: server rejected %d of %d events: %s", rejected, count, response.errors
            )

    def _count_failed(self, count: int, reason: str, retries: int) -> None:
        with self._lock:
            self._counts["failed"] += count
            self._counts["retries"] += retries
        self.count_drop(reason, count, warn=False)  # the caller logs each failed batch

    def _give_up_in_flight(self) -> None:
        """After the shutdown deadline: report the batch the sender is still posting.

        An HTTP attempt that began before shutdown() has the client's full ``timeout``,
        not the deadline, and cannot be cut short; the process may exit right after
        shutdown() returns and take the sender with it, so the batch is reported here
        and the sender drops its late outcome. The server may still have stored it."""
        with self._lock:
            batch, self._in_flight = self._in_flight, None
        if batch:
            self._report_given_up(
                batch, f"{len(batch)} events in flight at the shutdown deadline (may have arrived)"
            )

    def _give_up_on_rest(self) -> None:
        """After the shutdown deadline: report what is still queued, with its count."""
        with self._lock:
            rest = list(self._queue)
            self._queue.clear()
        if rest:
            self._report_given_up(rest, f"{len(rest)} events not sent before the shutdown deadline")

    def _report_given_up(self, batch: list[bytes], message: str) -> None:
        self._count_failed(len(batch), SHUTDOWN_TIMEOUT, 0)
        self._log.error("Klime: %s", message)
        self._call("on_error", DeliveryError(message, SHUTDOWN_TIMEOUT), decode(batch))
        self._mark_finished(len(batch))

    def _mark_finished(self, count: int) -> None:
        """Events left the queue for good (sent or failed): wake flush() waiters."""
        with self._progress:
            self._finished += count
            self._progress.notify_all()

    def _wait_finished(self, target: int, deadline: float | None) -> bool:
        with self._progress:
            while self._finished < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def _call(self, name: str, *args: Any) -> None:
        callback = getattr(self._options, name)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a user's callback must never kill the sender
            self._log.exception("Klime: %s callback raised", name)


def decode(batch: list[bytes]) -> list[dict[str, Any]]:
    """The events of a batch as dicts, for on_error and SendError (the slow path only)."""
    return [json.loads(item) for item in batch]
