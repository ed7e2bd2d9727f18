"""The spool as the sender sees it: this process's event log as a batch source, the
fall-back to memory when the disk fails, and the sending of what dead processes of the
same app left behind (their orphaned logs).

The files themselves (framing, segments, ownership locks, claiming) are ``spool``'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from klime_mp.delivery.accounting import Ledger
from klime_mp.delivery.deliverer import REJECTED, Delivery
from klime_mp.options import Options
from klime_mp.spool import log as spool
from klime_mp.wire import BATCH_BYTES, MAX_BATCH_SIZE

# How often a live sender looks for logs of dead processes: a SIGKILLed sibling's
# events go out within seconds, not at the next start.
SCAN_INTERVAL_S = 2.0
# Loss reasons of the spool (keys of ``Stats.dropped``); the size limit's is the
# storage's own (``spool.SPOOL_FULL``), reported through its on_loss callback.
TORN = "spool_torn"  # a record cut short by a kill mid-write, or corrupted on disk

_logger = logging.getLogger(__name__)

Post = Callable[[list[bytes]], Delivery]
Settle = Callable[[list[bytes], Delivery], None]


class Spool:
    """This process's log, read as a batch source by the sender, plus recovery."""

    def __init__(self, log: spool.EventLog | None, app_dir: Path, ledger: Ledger) -> None:
        # None: this process could not create its own log (a full or read-only disk). It
        # still recovers what dead processes left: that needs no free space, and it is what
        # frees the disk.
        self._log = log
        self._app_dir = app_dir
        self._ledger = ledger
        self._taken = 0  # records taken and not yet acknowledged or rewound
        self._failed = False  # the disk failed a write: new events go to memory

    @classmethod
    def open(cls, options: Options, ledger: Ledger) -> Spool | None:
        """This process's spool, or None without ``spool_dir`` or when the directory
        cannot be used (then the client keeps events in memory, with one warning)."""
        if options.spool_dir is None:
            return None
        app_dir = spool.app_directory(options.spool_dir, options.endpoint, options.write_key)

        def lost(reason: str, records: list[bytes]) -> None:
            for record in records:  # reported by the sender, not on the caller's thread
                ledger.park(reason, record)

        log: spool.EventLog | None = None
        try:
            log = spool.EventLog.open(app_dir, max_bytes=options.spool_max_bytes, on_loss=lost)
        except spool.SpoolUnavailable as exc:
            options.logger.warning(
                "Klime: spool directory %s unusable (%s); keeping events in memory",
                options.spool_dir,
                exc,
            )
        if log is not None:  # a disk that takes no log takes no note either
            spool.remember_endpoint(app_dir, options.endpoint)  # for `klime-mp spool status`
        return cls(log, app_dir, ledger)

    # -- the caller's side (under the worker's lock) -------------------------------------

    def append(self, data: bytes) -> bool:
        """Write one event; False when the disk failed it (the caller keeps it in
        memory instead). Never raises: an unusable disk never fails ``track()``."""
        log = self._log
        if self._failed or log is None:
            return False
        try:
            log.append(data)
        except OSError as exc:
            self._failed = True
            _logger.warning("Klime: the spool failed a write (%s); keeping events in memory", exc)
            return False
        return True

    # -- a batch source (under the worker's lock) ---------------------------------------

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        if self._log is None:
            return []
        batch = self._log.take(max_events, max_bytes)
        self._taken += len(batch)
        return batch

    def acknowledge(self, count: int) -> None:
        if self._log is not None:
            self._log.acknowledge(count)
            self._taken -= count

    def rewind(self) -> None:
        if self._log is not None:
            self._log.rewind()
        self._taken = 0

    def pending(self) -> int:
        return 0 if self._log is None else self._log.pending()

    def waiting(self) -> int:
        return 0 if self._log is None else self._log.pending() - self._taken

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
                if orphan.torn:
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
        if self._log is not None:
            self._log.close()

    def abandon(self) -> None:
        if self._log is not None:
            self._log.abandon()
