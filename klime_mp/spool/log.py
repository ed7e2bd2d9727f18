"""The spool: a durable, per-process, append-only event log on local disk (the files,
their formats and what each edge does are in docs/spool.md).

With a spool, every accepted event is written to a file before ``track()`` returns, so it
survives any death of its process; a live process of the same app (or the next one to
start) claims what a dead one left and sends it.

Layout: one directory per app, ``<spool_dir>/<16 hex of sha256(endpoint NUL write_key)>``
(the key is never on disk). Every process that writes has one *log* there, named
``<pid>-<8 random hex>``: ``<log>.ledger`` (the ownership lock and the acknowledged
position) and ``<log>-<seq>.seg`` segments of numbered records (``spool.format``), rolled
past ``SEGMENT_BYTES``, deleted once every record in them is acknowledged. Directories are
0700, files 0600.

Liveness: a log belongs to whoever holds a POSIX record lock (``lockf``) on its ledger,
taken before the ledger appears under its final name and held for the writer's whole life.
The kernel releases it on *any* death and ``fork()`` does not pass it to a child, so a log
whose lock can be taken is an orphan (the PID in its name is for people). Not ``flock``:
that belongs to the open file, which a forked child shares. POSIX locks belong to the
process and closing *any* descriptor of a locked file drops them, so this process never
opens a file it holds a second time (a per-process registry decides before any ``open``).

Durability: one ``write`` per event, no ``fsync`` (``EventLog.sync()`` forces it out at
chosen points). A record torn by a kill mid-write fails its checksum: skipped, and counted
in events by the gap in the sequence numbers (``spool.sequence``).

Modules: ``format``, ``files`` (naming, locks, reading), ``create``, ``orphans``, ``limit``
(undelivered bytes, checked every ``CHECK_EVERY_BYTES``), ``unread``, ``sequence``, ``status``.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import time
from collections.abc import Callable

from klime_mp.errors import SpoolUnavailable
from klime_mp.spool import format as fmt
from klime_mp.spool import limit
from klime_mp.spool.create import (
    app_directory,
    create_ledger,
    open_segment,
    prepare_directory,
)
from klime_mp.spool.files import (
    EVERYTHING,
    SEQ_SHIFT,
    Log,
    PathLike,
    Segment,
    check_limit,
    discard,
    ledger_path,
    pack_position,
    settle,
    unlink,
    unpack_position,
    warn_once,
)
from klime_mp.spool.format import START, Position
from klime_mp.spool.orphans import Orphan, claim_orphan
from klime_mp.spool.sequence import Numbering
from klime_mp.spool.status import AppStatus, app_directories, remember_endpoint, status
from klime_mp.spool.unread import Unread

__all__ = [
    "CHECK_EVERY_BYTES",
    "SEGMENT_BYTES",
    "SPOOL_FULL",
    "AppStatus",
    "EventLog",
    "LossCallback",
    "Orphan",
    "SpoolUnavailable",
    "app_directories",
    "app_directory",
    "claim_orphan",
    "remember_endpoint",
    "status",
]


logger = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024
CHECK_EVERY_BYTES = 1024 * 1024
# The segment being written is rolled once everything in it is acknowledged and it holds
# this much (or is this old), so delivered records leave the disk: a sender that keeps up
# holds at most about this much on disk, not a whole SEGMENT_BYTES of delivered records.
ROLL_ACKED_BYTES = 64 * 1024
ROLL_ACKED_AGE_S = 60.0
SPOOL_FULL = "spool_full"  # the on_loss reason when the size limit drops records

LossCallback = Callable[[str, list[bytes]], None]


# -- this process's own log --------------------------------------------------------------


class EventLog(Log):
    """This process's log for one app. ``append`` comes from one thread at a time (the
    caller holds its own lock); ``take``/``acknowledge``/``rewind`` from the sender."""

    def __init__(
        self,
        app_dir: str,
        log_id: str,
        ledger_fd: int,
        first: Segment,
        max_bytes: int,
        on_loss: LossCallback,
    ) -> None:
        super().__init__(app_dir, log_id, ledger_fd, START, [first])
        self._active = first
        self._max_bytes = max_bytes
        self._on_loss = on_loss
        self._appended = 0
        self._settled_count = 0  # acknowledged or dropped by the size limit
        self._unchecked = 0  # bytes written since the size limit was last checked
        self._roll = False  # the active segment is full (or a failed write spoilt it)
        self._active_since = time.monotonic()
        self._numbers = Numbering()  # records' sequence numbers: losses in events
        self._unread = Unread(pack_position(START))  # the newest records, for a sender keeping up

    @classmethod
    def open(cls, app_dir: PathLike, *, max_bytes: int, on_loss: LossCallback) -> EventLog:
        """A new log in ``app_dir`` (created 0700); SpoolUnavailable if it cannot be used.

        ``on_loss(reason, records)`` is called when the size limit deletes records. It runs
        inside ``append`` (so under the caller's append lock, which it must not take again)
        and never inside this log's own lock.
        """
        check_limit("max_bytes", max_bytes)
        if not callable(on_loss):
            raise TypeError("on_loss must be callable")
        directory = prepare_directory(app_dir)
        for _ in range(3):  # a name collision is (very) unlikely; O_EXCL would catch it
            log_id = f"{os.getpid()}-{secrets.token_hex(4)}"
            try:
                ledger_fd = create_ledger(directory, log_id)
            except FileExistsError:
                continue
            except OSError as exc:
                raise SpoolUnavailable(f"cannot write in {directory}: {exc}") from exc
            break
        else:
            raise SpoolUnavailable(f"cannot create a unique log name in {directory}")
        try:
            first = open_segment(directory, log_id, 1, first_seq=1)
        except OSError as exc:
            unlink(ledger_path(directory, log_id))
            os.close(ledger_fd)
            settle(ledger_path(directory, log_id), None)
            raise SpoolUnavailable(f"cannot write in {directory}: {exc}") from exc
        log = cls(directory, log_id, ledger_fd, first, max_bytes, on_loss)
        settle(log._ledger_path, log)
        return log

    def append(self, data: bytes) -> None:
        """Write one record with one ``os.write``; OSError if it could not be written.

        No PID check here (it would cost a system call per event): a forked child must not
        call this on its parent's log; the caller's fork detection calls ``abandon()``.
        """
        record = fmt.frame(data, self._numbers.written + 1)
        if self._unchecked >= CHECK_EVERY_BYTES or self._roll:
            self._maintain()
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "the spool log is closed")
            segment = self._active
            written = os.write(segment.fd, record)
            if written != len(record):
                self._undo_short_write(segment, written)
            segment.size += written
            self._unread.add((segment.seq << SEQ_SHIFT) + segment.size, data)
            self._appended += 1
            self._numbers.written += 1
        self._unchecked += written
        if segment.size >= SEGMENT_BYTES:
            self._roll = True

    def pending(self) -> int:
        """Records appended and not yet acknowledged (nor dropped by the size limit)."""
        return self._appended - self._settled_count

    def detached(self) -> bool:
        """Whether this log's files are gone from where they were (the directory, the
        ledger or the segment being written was removed or replaced): appends would still
        succeed, into files no successor can find. Two ``stat`` and two ``fstat``."""
        with self._lock:  # the sender may roll (and close) the active segment meanwhile
            if self._closed:
                return False
            try:
                files = ((self._ledger_path, self._ledger_fd), (self._active.path, self._active.fd))
                for path, fd in files:
                    if os.stat(path).st_ino != os.fstat(fd).st_ino:
                        return True
            except OSError:
                return True
        return False

    def sync(self) -> None:
        """Force the records appended so far to the disk (``fdatasync`` of the segments, and
        ``fsync`` of the directory for new files), outside ``_lock`` on duplicated
        descriptors so appends never wait on the disk. Not the ledger: closing a duplicate
        would drop its lock, and a stale one only resends what was delivered."""
        with self._lock:
            self._check_open()
            fds = [os.dup(segment.fd) for segment in self._segments]
        try:
            for fd in fds:
                os.fdatasync(fd)
            directory = os.open(self._app_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        """Delete the files if everything was acknowledged, else leave them (unlocked) to a
        successor. Call after the sender stopped taking."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            done = self._settled_count == self._appended and not self._in_flight
        self._close_files(delete=done)

    def abandon(self) -> None:
        """In a forked child, for the parent's log: close this process's descriptors and
        nothing else (no lock, no write, no delete; the parent owns the files).

        Call it before this process claims any orphan: if the parent has died meanwhile
        and this process claimed its log, closing the inherited ledger descriptor would
        drop this process's own lock on it (a POSIX lock goes with any close).
        """
        # Not self._lock: another thread of the parent may have held it at the fork.
        self._closed = True
        for segment in self._segments + self._dropped:
            os.close(segment.fd)
        os.close(self._ledger_fd)  # this process never held the lock: the parent keeps it
        self._segments, self._dropped = [], []

    def _undo_short_write(self, segment: Segment, written: int) -> None:
        # A disk that fills mid-record: cut the partial record off, so the next record
        # starts where the reader expects one; if that fails, roll to a new segment.
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError:
            self._roll = True
        reason = f"{os.strerror(errno.ENOSPC)} (a short write: {written} bytes)"
        raise OSError(errno.ENOSPC, reason)

    def _maintain(self) -> None:
        # The caller's lock is held (one appender): roll and size checks need no more.
        if self._roll:
            with self._lock:
                freed = self._roll_locked()
            discard(freed)
        self._unchecked = 0
        self._enforce_limit()

    def _roll_locked(self) -> list[Segment]:
        # Under _lock: the sender rolls too (below), not only the appender.
        seq = self._numbers.written + 1
        segment = open_segment(self._app_dir, self._log_id, self._active.seq + 1, first_seq=seq)
        self._segments.append(segment)
        self._active = segment
        self._active_since = time.monotonic()
        self._roll = False
        return super()._free_acknowledged()  # the previous one, if rolled as delivered

    def _free_acknowledged(self) -> list[Segment]:
        freed = super()._free_acknowledged()
        active, acked = self._active, self._acked
        if (
            acked.segment == active.seq
            and acked.offset >= active.size
            and (
                active.size >= ROLL_ACKED_BYTES
                or (
                    active.size > active.layout.start
                    and time.monotonic() - self._active_since >= ROLL_ACKED_AGE_S
                )
            )
        ):
            try:  # all of it delivered: free it now, not at the next append
                freed += self._roll_locked()
            except OSError:
                self._roll = True  # the next append tries (and reports a failure)
        return freed

    def _enforce_limit(self) -> None:
        for lost in limit.enforce(self, self._max_bytes):
            self._report_loss(lost)

    @property
    def app_dir(self) -> str:
        return self._app_dir

    @property
    def log_id(self) -> str:
        return self._log_id

    def acknowledged_bytes(self) -> int:
        """Bytes of this log's segments before the acknowledged position (delivered)."""
        with self._lock:  # with those the sender is deleting: still in a listing
            acked = self._acked
            return sum(s.size for s in self._freeing) + sum(
                s.size if s.seq < acked.segment else min(acked.offset, s.size)
                for s in self._segments
                if s.seq <= acked.segment
            )

    def drop_own(self, seq: int) -> list[bytes] | None:
        """For the size limit: delete one of this log's segments (not the active one, nor
        one in flight); its unsent records, or None if it must stay."""
        with self._lock:
            segment = next((s for s in self._segments if s.seq == seq), None)
            flight = self._in_flight
            if segment is None or segment is self._active:
                return None
            if flight and flight[0] >> SEQ_SHIFT <= seq <= flight[-1] >> SEQ_SHIFT:
                return None  # its records are being sent: they will be acknowledged
            cursor = self._cursor
            start = cursor.offset if cursor.segment == seq else 0
            batch = fmt.Batch()
            if cursor.segment <= seq:
                fmt.read(segment.fd, start, segment.size, EVERYTHING, EVERYTHING, batch)
                self._numbers.dropped(batch.seqs)
            os.ftruncate(segment.fd, 0)  # frees the space now; the reader closes the fd
            self._unread.clear()  # it may hold some of these records: they are lost now
            unlink(segment.path)
            self._segments.remove(segment)
            self._dropped.append(segment)
            self._generation += 1
            self._settled_count += len(batch.payloads)
        return batch.payloads

    def _report_loss(self, lost: list[bytes]) -> None:
        if not lost:
            return
        try:
            self._on_loss(SPOOL_FULL, lost)
        except Exception:
            logger.exception("spool: on_loss raised")

    def _is_active(self, segment: Segment) -> bool:
        return segment is self._active

    def _settled(self, count: int) -> None:
        self._settled_count += count
        self._numbers.acknowledged(count)

    def _take_unread(self, cursor: Position, max_events: int, max_bytes: int) -> list[bytes]:
        # From memory while the sender keeps up (see spool_unread).
        unread = self._unread
        payloads, ends = unread.take(pack_position(cursor), max_events, max_bytes)
        if payloads:
            self._numbers.taken(unread.first_taken, len(payloads))
            self._advance(unpack_position(ends[-1]), ends, [])
        return payloads

    def _taken(self, ends: list[int], seqs: list[int]) -> None:
        self._numbers.taken_from_disk(seqs)

    def rewind(self) -> None:
        super().rewind()
        with self._lock:
            self._numbers.rewound()

    def _appended_seq(self) -> int | None:
        return self._numbers.written

    def _count_torn(self, batch: fmt.Batch, appended: int | None) -> None:
        # A region first served from memory and found damaged on disk after a rewind
        # counts here: its numbers were never taken from disk (see spool.sequence).
        lost = self._numbers.lost(batch, appended)
        if lost:
            self.torn += lost
            warn_once(
                f"torn:{self._ledger_path}",
                "spool: damaged records skipped in %s (%d events)",
                self._ledger_path,
                lost,
            )
