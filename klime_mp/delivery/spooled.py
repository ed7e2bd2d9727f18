"""The spool as the sender sees it: this process's event log as a batch source, the
fall-back to memory when the disk fails, and the sending of what dead processes of the
same app left behind (their orphaned logs).

The files themselves (framing, segments, ownership locks, claiming) are ``spool``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from klime_mp.delivery.accounting import Ledger
from klime_mp.delivery.deliverer import REJECTED, Delivery
from klime_mp.errors import SpoolUnavailable
from klime_mp.options import Options
from klime_mp.spool import log as spool
from klime_mp.wire import BATCH_BYTES, MAX_BATCH_SIZE

# How often a live sender looks for logs of dead processes: a SIGKILLed sibling's
# events go out within seconds, not at the next start.
SCAN_INTERVAL_S = 2.0
# A spool that stopped working (a full or read-only disk, a removed directory) is tried
# again this often, so the client returns to durable mode by itself; each try costs a few
# system calls on one caller's thread.
RETRY_INTERVAL_S = 30.0
# How often an append also checks that the log's files are still where they were: a
# directory deleted under a running process takes no error on write, only on this check.
CHECK_INTERVAL_S = 2.0
# Loss reasons of the spool (keys of ``Stats.dropped``); the size limit's is the
# storage's own (``spool.SPOOL_FULL``), reported through its on_loss callback.
TORN = "spool_torn"  # a record cut short by a kill mid-write, or corrupted on disk

_logger = logging.getLogger(__name__)

Post = Callable[[list[bytes]], Delivery]
Settle = Callable[[list[bytes], Delivery], None]


class Spool:
    """This process's log, read as a batch source by the sender, plus recovery.

    When the disk stops working (an episode), new events go to memory, the cause is said
    once (the log, ``on_error``, ``Stats.spool_failures``), and the disk is tried again
    every ``RETRY_INTERVAL_S``: the first append that works ends the episode."""

    def __init__(self, log: spool.EventLog | None, app_dir: Path, ledger: Ledger) -> None:
        # None: this process could not create its own log (a full or read-only disk). It
        # still recovers what dead processes left: that needs no free space, and it is what
        # frees the disk.
        self._log = log
        self._app_dir = app_dir
        self._ledger = ledger
        self._open_log: Callable[[], spool.EventLog] | None = None
        # Logs whose files were removed under this process: still read (their descriptors
        # hold the data) until everything in them is sent, then closed by the sender. A
        # tuple replaced whole under ``_retiring`` (the appender adds, the sender removes),
        # so that pending() reads it on every track() without a lock.
        self._retired: tuple[spool.EventLog, ...] = ()
        self._retiring = threading.Lock()
        # The sender's alone (take/acknowledge/rewind run on its thread, outside the
        # worker's lock): the log the batch in flight came from, and how many it took.
        # Others only read _taken (waiting()), which may be stale by one batch then.
        self._source: spool.EventLog | None = None
        self._taken = 0  # records taken and not yet acknowledged or rewound
        self._down: str | None = None  # the cause of the current episode, if any
        self._retry_at = 0.0
        self._check_at = time.monotonic() + CHECK_INTERVAL_S
        self._stop_syncing = threading.Event()  # replaced by a running one, if syncing

    @classmethod
    def open(cls, options: Options, ledger: Ledger) -> Spool | None:
        """This process's spool, or None without ``spool_dir``. A directory that cannot
        be used starts an episode (events in memory, one warning, retried)."""
        if options.spool_dir is None:
            return None
        app_dir = spool.app_directory(options.spool_dir, options.endpoint, options.write_key)

        def lost(reason: str, records: list[bytes]) -> None:
            for record in records:  # reported by the sender, not on the caller's thread
                ledger.park(reason, record)

        def open_log() -> spool.EventLog:
            log = spool.EventLog.open(app_dir, max_bytes=options.spool_max_bytes, on_loss=lost)
            spool.remember_endpoint(app_dir, options.endpoint)  # for `klime-mp spool status`
            return log

        opened = cls(None, app_dir, ledger)
        opened._open_log = open_log
        try:
            opened._log = open_log()
        except spool.SpoolUnavailable as exc:
            opened._fail(f"the directory {options.spool_dir} is unusable: {exc}")
        if options.spool_fsync_interval is not None:
            opened._start_syncing(options.spool_fsync_interval)
        return opened

    # -- power loss (spool_fsync_interval) -----------------------------------------------

    def _start_syncing(self, interval: float) -> None:
        """Force the log to disk every ``interval`` seconds from a thread of its own: not
        on a caller's thread (a disk flush costs milliseconds), and not the sender's, which
        an outage holds in its backoff exactly when events pile up on disk."""
        self._stop_syncing = threading.Event()
        thread = threading.Thread(
            target=self._sync_every, args=(interval,), name="klime-spool-sync", daemon=True
        )
        thread.start()

    def _sync_every(self, interval: float) -> None:
        stop, warned = self._stop_syncing, False
        while not stop.wait(interval):
            log = self._log
            if log is None:
                continue
            try:
                log.sync()
            except ValueError:  # closed meanwhile
                return
            except OSError as exc:
                if not warned:  # once: a failing disk is an episode said by append
                    _logger.warning("Klime: the spool could not be forced to disk: %s", exc)
                warned = True

    # -- the caller's side (under the worker's lock) -------------------------------------

    def append(self, data: bytes) -> bool:
        """Write one event; False when the disk failed it (the caller keeps it in
        memory instead). Never raises: an unusable disk never fails ``track()``."""
        now = time.monotonic()
        if self._down is not None:
            if now < self._retry_at or not self._revive():
                return False
        elif now >= self._check_at:
            self._check_at = now + CHECK_INTERVAL_S
            if not self._check():
                return False
        log = self._log
        if log is None:
            return False
        try:
            log.append(data)
        except OSError as exc:
            self._fail(f"a write failed: {exc}")
            return False
        if self._down is not None:
            self._recovered()
        return True

    def _check(self) -> bool:
        """The log's files are where they were; if not, a new log takes the appends."""
        log = self._log
        if log is None or not log.detached():
            return True
        self._log = None
        # Sent from its open files, not durable any more; closed by the sender (even if
        # empty: an acknowledgement may be writing to it now).
        self._retire(log)
        self._fail(
            f"its files were removed ({log.app_dir}); {log.pending()} events waiting in"
            " them are now kept by this process only"
        )
        return self._revive()

    def _revive(self) -> bool:
        """Try the disk again (the episode ends with the next append that works)."""
        self._retry_at = time.monotonic() + RETRY_INTERVAL_S
        log = self._log
        if log is not None and not log.detached():
            return True  # the same log: the append will tell
        if log is not None:
            self._log = None
            self._retire(log)
        if self._open_log is None:
            return False
        try:
            self._log = self._open_log()
        except spool.SpoolUnavailable:
            return False
        return True

    def _fail(self, cause: str) -> None:
        self._retry_at = time.monotonic() + RETRY_INTERVAL_S
        if self._down is not None:
            return  # said once per episode
        self._down = cause
        self._ledger.add("spool_failures")
        message = (
            f"the spool stopped working: {cause}; new events are kept in memory (lost if"
            f" the process dies) and the disk is tried again every {RETRY_INTERVAL_S:g} s"
        )
        _logger.warning("Klime: %s", message)
        self._ledger.notice(SpoolUnavailable(message))  # on_error, from the sender

    def _recovered(self) -> None:
        _logger.warning(
            "Klime: the spool works again (it had stopped: %s); new events are durable",
            self._down,
        )
        self._down = None
        self._check_at = time.monotonic() + CHECK_INTERVAL_S

    def _retire(self, log: spool.EventLog) -> None:
        with self._retiring:
            self._retired = (*self._retired, log)

    def _close_retired(self, log: spool.EventLog) -> None:
        with self._retiring:
            self._retired = tuple(r for r in self._retired if r is not log)
        if self._source is log:
            self._source = None
        log.close()

    # -- a batch source (the sender's thread, outside the worker's lock) -----------------

    def _logs(self) -> list[spool.EventLog]:
        return [*self._retired, *([] if self._log is None else [self._log])]

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        for log in self._retired:
            if not log.pending():  # nothing in flight either
                self._close_retired(log)
        for log in self._logs():  # retired logs first: their events are older
            if log.pending() - (self._taken if log is self._source else 0) > 0:
                torn = log.torn
                batch = log.take(max_events, max_bytes)
                if log.torn != torn:  # damaged on disk, in events (spool.sequence)
                    self._ledger.count_only(TORN, log.torn - torn)
                if batch:
                    self._source = log
                    self._taken += len(batch)
                    return batch
        return []

    def acknowledge(self, count: int) -> None:
        source = self._source
        if source is not None:
            self._taken -= count  # first: waiting() may be one batch high, never low
            source.acknowledge(count)
            if source in self._retired and not source.pending():
                self._close_retired(source)

    def rewind(self) -> None:
        if self._source is not None:
            self._source.rewind()
        self._taken = 0

    def pending(self) -> int:
        # On every track() (the worker's queue length): no list built here.
        log = self._log
        count = 0 if log is None else log.pending()
        for retired in self._retired:
            count += retired.pending()
        return count

    def waiting(self) -> int:
        """Records not yet taken. Read under the lock appends take (the worker's, as
        every reader there does): it may then be one batch high, never low. Without that
        lock, appends and a take can land between its two reads, and it may be low."""
        return self.pending() - self._taken

    # -- recovery (the sender, holding its send lock) ------------------------------------

    def recover(self, post: Post, settle: Settle, deadline: float | None) -> None:
        """Claim the logs of dead processes one at a time and send them. A failed send
        (an outage, the deadline) puts the orphan back for a later try or another
        process; only a refusal by the server loses events (reported by ``settle``)."""
        while deadline is None or time.monotonic() < deadline:
            orphan = spool.claim_orphan(self._app_dir)
            if orphan is None:
                return
            try:
                finished = self._send_orphan(orphan, post, settle)
                if orphan.resent:  # taken for sending by the dead process: may be twice
                    self._ledger.add("resent", orphan.resent)
                if orphan.torn and finished:  # once: an unfinished orphan is scanned again
                    self._ledger.count_only(TORN, orphan.torn)
            finally:
                orphan.release()
            if not finished:
                return

    def _send_orphan(self, orphan: spool.Orphan, post: Post, settle: Settle) -> bool:
        while True:
            batch = orphan.take(MAX_BATCH_SIZE, BATCH_BYTES)
            if not batch:
                return True
            delivery = post(batch)
            refused = delivery.error is not None and delivery.error.reason == REJECTED
            if delivery.response is None and not refused:
                orphan.rewind()
                return False
            orphan.acknowledge(len(batch))
            if delivery.response is not None:
                self._ledger.add("recovered", len(batch))
            settle(batch, delivery)

    def close(self) -> None:
        self._stop_syncing.set()
        for log in self._logs():
            log.close()

    def abandon(self) -> None:
        # In a forked child: the parent's sync thread did not come along; no new one starts.
        for log in self._logs():
            log.abandon()
