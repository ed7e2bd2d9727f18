"""KlimeClient: the official SDK's API on top of a per-process worker.

An event's path: ``track()`` encodes it (``events.encode_track``), takes this process's
worker (``forksafe.ProcessLocal.get``: rebuilt after a fork) and appends the bytes to
its queue (``worker.Worker.enqueue``); the worker's thread batches them and POSTs them
(``delivery.Deliverer.send``, one attempt at a time through ``transport.Transport.post``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Optional

from klime_mp import before_send, events, host_hooks
from klime_mp.delivery.worker import OVERSIZED, Stats, Worker
from klime_mp.errors import BeforeSendError, EventTooLargeError, SendError
from klime_mp.lifecycle import forksafe
from klime_mp.lifecycle.forksafe import ProcessLocal
from klime_mp.metrics import register as register_metrics
from klime_mp.options import BeforeSend, ErrorCallback, Options, SuccessCallback, build_options
from klime_mp.responses import BatchResponse
from klime_mp.timestamps import Timestamp, to_wire

# uWSGI's and Celery's exit paths are hooked on a client's first use in each process.
forksafe.on_first_use_in_process(host_hooks.install_for_process)

Properties = Optional[Mapping[str, Any]]


class KlimeClient:
    """A drop-in replacement for ``klime.KlimeClient`` that is safe across fork().

    Nothing starts at construction: the sender thread and HTTP connection of each
    process start with that process's first event."""

    def __init__(
        self,
        write_key: str | None = None,
        endpoint: str | None = None,
        flush_interval: int | None = None,
        max_batch_size: int | None = None,
        max_queue_size: int | None = None,
        retry_max_attempts: int | None = None,
        retry_initial_delay: int | None = None,
        flush_on_shutdown: bool | None = None,
        logger: logging.Logger | None = None,
        on_error: ErrorCallback | None = None,
        on_success: SuccessCallback | None = None,
        *,
        timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
        send: bool = True,
        sync_mode: bool = False,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
        debug: bool | None = None,
        metrics: bool = True,
        stall_warning: float = 300.0,
        before_send: BeforeSend | None = None,
        compression: str | None = None,
        spool_fsync_interval: float | None = None,
    ) -> None:
        self._options = build_options(
            write_key,
            endpoint,
            flush_interval,
            max_batch_size,
            max_queue_size,
            retry_max_attempts,
            retry_initial_delay,
            flush_on_shutdown,
            logger,
            on_error,
            on_success,
            timeout=timeout,
            shutdown_timeout=shutdown_timeout,
            send=send,
            sync_mode=sync_mode,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            debug=debug,
            metrics=metrics,
            stall_warning=stall_warning,
            before_send=before_send,
            compression=compression,
            spool_fsync_interval=spool_fsync_interval,
        )
        if self._options.metrics:  # the instruments, once; read at collection time
            register_metrics()
        # partial, not a lambda over self: the registry must not keep the client alive.
        self._worker: ProcessLocal[Worker] = ProcessLocal(
            functools.partial(Worker, self._options),
            functools.partial(_exit_flush, self._options),
            exit_timeout=self._options.shutdown_timeout,
        )
        if self._options.before_send is not None:
            # Only a client with a hook pays for it: its queued calls go through the
            # hook on their way to the queue. The class's _enqueue, which every other
            # client uses, has no check for it. (The bound method makes a reference
            # cycle; the garbage collector frees it.)
            self._enqueue = self._enqueue_screened  # type: ignore[method-assign]  # see above

    @property
    def options(self) -> Options:
        return self._options

    # -- fire and forget: never waits on the network ---------------------------------
    #
    # ``timestamp`` (keyword-only): when the event happened, for past events; a
    # timezone-aware datetime or an ISO 8601 string with an offset. Omitted: the time of
    # the call. ``_stamp`` is not called then, so the common path costs nothing more.

    def track(
        self,
        event: str,
        properties: Properties = None,
        user_id: events.Id | None = None,
        group_id: events.Id | None = None,
        *,
        timestamp: Timestamp | None = None,
        message_id: str | None = None,
    ) -> None:
        """Queue a track event; needs ``user_id`` or ``group_id`` (or both)."""
        stamp = None if timestamp is None else to_wire(timestamp)
        self._enqueue(events.encode_track(event, properties, user_id, group_id, stamp, message_id))

    def identify(
        self,
        user_id: events.Id,
        traits: Properties = None,
        *,
        timestamp: Timestamp | None = None,
        message_id: str | None = None,
    ) -> None:
        """Queue an identify event for ``user_id``."""
        stamp = None if timestamp is None else to_wire(timestamp)
        self._enqueue(events.encode_identify(user_id, traits, stamp, message_id))

    def group(
        self,
        group_id: events.Id,
        traits: Properties = None,
        user_id: events.Id | None = None,
        *,
        timestamp: Timestamp | None = None,
        message_id: str | None = None,
    ) -> None:
        """Queue a group event; with ``user_id`` it also links the user to the group."""
        stamp = None if timestamp is None else to_wire(timestamp)
        self._enqueue(events.encode_group(group_id, traits, user_id, stamp, message_id))

    # -- synchronous: send now, return the server's answer or raise SendError -------------

    def track_sync(
        self,
        event: str,
        properties: Properties = None,
        user_id: events.Id | None = None,
        group_id: events.Id | None = None,
        *,
        timestamp: Timestamp | None = None,
        message_id: str | None = None,
    ) -> BatchResponse:
        stamp = None if timestamp is None else to_wire(timestamp)
        body = events.build_track(event, properties, user_id, group_id, stamp, message_id)
        return self._send_now(body)

    def identify_sync(
        self,
        user_id: events.Id,
        traits: Properties = None,
        *,
        timestamp: Timestamp | None = None,
        message_id: str | None = None,
    ) -> BatchResponse:
        stamp = None if timestamp is None else to_wire(timestamp)
        return self._send_now(events.build_identify(user_id, traits, stamp, message_id))

    def group_sync(
        self,
        group_id: events.Id,
        traits: Properties = None,
        user_id: events.Id | None = None,
        *,
        timestamp: Timestamp | None = None,
        message_id: str | None = None,
    ) -> BatchResponse:
        stamp = None if timestamp is None else to_wire(timestamp)
        return self._send_now(events.build_group(group_id, traits, user_id, stamp, message_id))

    # -- delivery control ---------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event tracked before this call is sent, at most ``timeout``
        seconds (10 s when None: an outage never holds the caller longer).

        True only when all of them were delivered and none was lost since the previous
        flush() returned; False when any was lost (reported to ``on_error``) or is still
        waiting (it stays queued, or on disk with a spool, and the sender carries on)."""
        worker = self._worker.peek()
        return True if worker is None else worker.flush(timeout)

    async def flush_async(self, timeout: float | None = None) -> bool:
        """``flush()`` for async code: the wait runs in the loop's default executor, so
        the event loop keeps serving while the sender delivers."""
        import asyncio  # here: most programs never await, and asyncio is slow to import

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.flush, timeout)

    def shutdown(self) -> bool:
        """Send what is queued (within ``shutdown_timeout``) and stop, in this process.

        Idempotent. True when everything was delivered; False when some events could
        not be: without a spool they are reported to ``on_error`` and the log with
        their count, with one they stay on disk for the next process of this app."""
        delivered = self._worker.get().shutdown(self._options.shutdown_timeout)
        self._worker.release()
        return delivered

    def queue_size(self) -> int:
        """Events waiting in this process's queue."""
        worker = self._worker.peek()
        return 0 if worker is None else worker.size()

    def stats(self) -> Stats:
        """A snapshot of this process's counters (a forked child starts from zero)."""
        worker = self._worker.peek()
        return Stats() if worker is None else worker.stats()

    def __enter__(self) -> KlimeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"KlimeClient(endpoint={self._options.endpoint!r})"

    # -- internals ----------------------------------------------------------------------

    def _enqueue(self, data: bytes) -> None:
        """Hand one encoded event to this process's worker (built once per process)."""
        worker = self._worker.get()
        try:
            events.check_size(data)
        except EventTooLargeError as error:
            # Oversized events depend on data, not on the code path: raising here could
            # fail a web request in production, so they are dropped, counted and reported.
            worker.refuse(OVERSIZED, error, [json.loads(data)])
            return
        worker.enqueue(data)
        if forksafe.exit_flushed_pid:  # only once the process is exiting
            self._worker.exit_if_late()

    def _enqueue_screened(self, data: bytes) -> None:
        """``_enqueue`` of a client with before_send (set in __init__)."""
        try:
            kept = self._screen(data)
        except BeforeSendError:
            return  # reported by _screen; the hook's failure never fails the caller
        if kept is not None:
            KlimeClient._enqueue(self, kept)

    def _screen(self, data: bytes) -> bytes | None:
        """The event as before_send left it; None when it was dropped (counted). A hook
        that fails drops the event too: counted, logged and reported to on_error."""
        hook = self._options.before_send
        assert hook is not None  # only called for a client with one
        try:
            kept = before_send.screen(hook, data)
        except BeforeSendError as error:
            self._worker.get().refuse(before_send.FAILED, error, [json.loads(data)])
            raise
        if kept is None:
            self._worker.get().filtered(before_send.FILTERED)
        return kept

    def _send_now(self, body: dict[str, Any]) -> BatchResponse:
        data = events.serialize(body)
        if self._options.before_send is not None:
            try:
                kept = self._screen(data)
            except BeforeSendError as error:
                raise SendError(str(error), [json.loads(data)]) from error
            if kept is None:
                return BatchResponse(status="dropped", accepted=0, failed=0)
            data = kept
        events.check_size(data)  # EventTooLargeError is a ValueError: raised to the caller
        return self._worker.get().send_now(data)


def _exit_flush(options: Options, worker: Worker, budget: float | None) -> None:
    # Without flush_on_shutdown, nothing is sent at exit, but what is given up is still
    # reported (a zero timeout); with a spool it stays on disk for the next process.
    timeout = options.shutdown_timeout if options.flush_on_shutdown else 0.0
    worker.shutdown(timeout if budget is None else min(timeout, budget))


__all__ = ["KlimeClient", "SendError"]
