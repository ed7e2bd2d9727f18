"""The spool: a durable, per-process, append-only event log on local disk.

With a spool, every accepted event is written to a file before ``track()`` returns, so it
survives any death of its process; a live process of the same app (or the next one to
start) claims what a dead one left and sends it.

Layout: one directory per app, ``<spool_dir>/<16 hex of sha256(endpoint NUL write_key)>``
(the key itself is never on disk, and a process only ever reads its own app's events).
In it, every process that writes has one *log*, named ``<pid>-<8 random hex>``:

- ``<log>.ledger``: the ownership lock and the acknowledged position (see spool_format);
- ``<log>-<seq>.seg``: segments of framed records, appended to, rolled past
  ``SEGMENT_BYTES``, deleted once every record in them is acknowledged.

Directories are 0700, files 0600. Anything else in the directory is skipped with one warning.

Liveness: a log belongs to whoever holds a POSIX record lock (``lockf``) on its ledger. The
writer takes it before the ledger appears under its final name (created under a temporary
name, locked, renamed) and holds it for its whole life. The kernel releases it on *any*
death (SIGKILL, OOM, ``os._exit``, a re-raised signal), and ``fork()`` does not pass it to a
child, so a forked child never keeps a dead parent's log alive. A log whose lock can be
taken is therefore an orphan, whatever its name says: this is why no PID and process start
time are compared. A PID can be reused by an unrelated process; a lock cannot outlive its
process. The PID in the name is only for people reading the directory. Not ``flock`` (nor
Linux's open-file-description locks): those belong to the open file, which a forked child
shares, so a child that outlived its parent would keep the parent's log looking alive.
The directory must be on a local filesystem (network filesystems may not release a dead
process's locks).

POSIX locks have two traps, both handled here: they belong to the process, so another
thread's ``lockf`` on a file this process holds succeeds, and closing *any* descriptor of a
locked file drops the lock. So this process never opens a file it holds a second time: a
per-process registry of held ledgers (reset in a forked child) decides before any ``open``.
After winning a lock, the claimer checks that the path still names the file it locked (the
previous holder may have deleted it in between).

Durability: one ``write`` per event, no ``fsync``. The record is in the kernel's page cache
when ``append`` returns, so it survives the death of the process. A power loss or kernel
crash can lose what the kernel had not yet written back (Linux: up to about 30 s, the
``vm.dirty_expire_centisecs`` default, plus the flusher interval); ``EventLog.sync()``
forces it out at chosen points (e.g. in ``flush()``), at the price of a disk flush each time.
A record torn by such a crash or by a kill mid-write is detected by its checksum, skipped and
counted, and the records after it still read.

Limits: ``max_bytes`` bounds the whole app directory, approximately (checked when a
segment rolls and every ``CHECK_EVERY_BYTES`` written, not per event). Over it, the oldest
segments go first: this process's own (never the one being written or one whose records are
in flight), and orphans' (claimed first, so never a segment another live process holds),
oldest modification time first. Their unacknowledged records are passed to ``on_loss``.

Modules: the record and ledger formats are in ``spool_format``; naming, the registry,
locking and reading in ``spool_files``; the in-memory copy of the newest records, which a
sender keeping up takes instead of reading them back, in ``spool_unread``; ``status`` in
``spool_status``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from klime_mp.errors import SpoolUnavailable
from klime_mp.spool import format as fmt
from klime_mp.spool.files import (
    EVERYTHING,
    LEDGER_SUFFIX,
    SEGMENT_NAME,
    SEQ_SHIFT,
    FileInfo,
    Listing,
    Log,
    PathLike,
    Segment,
    check_limit,
    ledger_path,
    list_directory,
    lock_existing,
    pack_position,
    reserve,
    segment_path,
    settle,
    unlink,
    unpack_position,
    warn_once,
)
from klime_mp.spool.format import START, Position
from klime_mp.spool.status import AppStatus, app_directories, remember_endpoint, status
from klime_mp.spool.unread import Unread

__all__ = [
    "CHECK_EVERY_BYTES",
    "DEFAULT_MAX_BYTES",
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

# 256 MiB per app directory: at ~300 bytes an event, about 900,000 events, so hours of a
# busy app's traffic through a backend outage, while still small next to any disk a server
# writes logs to. Set it lower in containers with a small ephemeral-storage limit.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SEGMENT_BYTES = 4 * 1024 * 1024
CHECK_EVERY_BYTES = 1024 * 1024
SPOOL_FULL = "spool_full"  # the on_loss reason when the size limit drops records
# A ledger still under its temporary name this long, or a segment without a ledger this old,
# was left by a crash (younger ones may belong to a log being created right now).
STALE_TEMP_S = 60.0

LossCallback = Callable[[str, list[bytes]], None]


def app_directory(spool_dir: PathLike, endpoint: str, write_key: str) -> Path:
    """The directory of one app's logs: a digest of endpoint and key, never the key."""
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    if not isinstance(write_key, str):
        raise TypeError(f"write_key must be a str, got {type(write_key).__name__}")
    digest = hashlib.sha256(f"{endpoint}\0{write_key}".encode()).hexdigest()[:16]
    return Path(spool_dir) / digest


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
        self._seen = START  # corrupt regions are counted once, on first read
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
        directory = _prepare_directory(app_dir)
        for _ in range(3):  # a name collision is (very) unlikely; O_EXCL would catch it
            log_id = f"{os.getpid()}-{secrets.token_hex(4)}"
            try:
                ledger_fd = _create_ledger(directory, log_id)
            except FileExistsError:
                continue
            except OSError as exc:
                raise SpoolUnavailable(f"cannot write in {directory}: {exc}") from exc
            break
        else:
            raise SpoolUnavailable(f"cannot create a unique log name in {directory}")
        try:
            first = _open_segment(directory, log_id, 1)
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
        record = fmt.frame(data)
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
        self._unchecked += written
        if segment.size >= SEGMENT_BYTES:
            self._roll = True

    def pending(self) -> int:
        """Records appended and not yet acknowledged (nor dropped by the size limit)."""
        return self._appended - self._settled_count

    def sync(self) -> None:
        """Force what was appended to the disk (``fdatasync``): for callers that want it to
        survive a power loss at a chosen point, e.g. an explicit flush. Costs a disk flush."""
        with self._lock:
            self._check_open()
            for segment in self._segments:  # a roll since the last sync left older ones
                os.fdatasync(segment.fd)
            os.fdatasync(self._ledger_fd)

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
        raise OSError(errno.ENOSPC, f"short write to the spool ({written} bytes)")

    def _maintain(self) -> None:
        # The caller's lock is held (one appender): roll and size checks need no more.
        if self._roll:
            seq = self._active.seq + 1
            segment = _open_segment(self._app_dir, self._log_id, seq)
            with self._lock:
                self._segments.append(segment)
                self._active = segment
            self._roll = False
        self._unchecked = 0
        self._enforce_limit()

    def _enforce_limit(self) -> None:
        try:
            listing = list_directory(self._app_dir)
        except OSError:
            return
        total = listing.total_bytes()
        if total <= self._max_bytes:
            return
        oldest = sorted(
            (found.mtime, seq, log_id, found.size)
            for log_id, files in listing.segments.items()
            for seq, found in files.items()
        )
        orphans: dict[str, Orphan | None] = {}
        try:
            for _, seq, log_id, size in oldest:
                if total <= self._max_bytes:
                    break
                lost = self._drop(listing, orphans, log_id, seq)
                if lost is not None:
                    total -= size
                    self._report_loss(lost)
        finally:
            for orphan in orphans.values():
                if orphan is not None:
                    orphan.release()

    def _drop(
        self, listing: Listing, orphans: dict[str, Orphan | None], log_id: str, seq: int
    ) -> list[bytes] | None:
        """Delete one segment; its unacknowledged records, or None if it must stay."""
        if log_id == self._log_id:
            return self._drop_own(seq)
        if log_id not in listing.ledgers:
            found = listing.segments[log_id][seq]
            if not _is_stray(self._app_dir, listing, log_id, found):
                return None
            unlink(found.path)
            return []  # an acknowledged leftover: nothing is lost
        if log_id not in orphans:
            orphans[log_id] = _claim(self._app_dir, log_id, scan=False)
        orphan = orphans[log_id]
        return None if orphan is None else orphan._drop_segment(seq)

    def _drop_own(self, seq: int) -> list[bytes] | None:
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

    def _take_unread(self, cursor: Position, max_events: int, max_bytes: int) -> list[bytes]:
        # From memory while the sender keeps up (see spool_unread).
        payloads, ends = self._unread.take(pack_position(cursor), max_events, max_bytes)
        if payloads:
            # Not _count_torn: that region of the disk is still unread, and a rewind
            # that reads it must count what it finds damaged there.
            self._advance(unpack_position(ends[-1]), ends)
        return payloads

    def _count_torn(self, start: Position, end: Position, corrupt: int) -> None:
        if start >= self._seen:
            self.torn += corrupt
            if corrupt:
                warn_once(
                    f"torn:{self._ledger_path}",
                    "spool: corrupt records skipped in %s",
                    self._ledger_path,
                )
        self._seen = max(self._seen, end)


def _prepare_directory(app_dir: PathLike) -> str:
    path = os.path.abspath(os.fspath(app_dir))
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.chmod(path, 0o700)  # another user's process must not read our events
    except OSError as exc:
        raise SpoolUnavailable(f"cannot use {path} as a spool directory: {exc}") from exc
    return os.path.realpath(path)


def _create_ledger(app_dir: str, log_id: str) -> int:
    """A locked ledger that appears under its final name only once it is locked."""
    final = ledger_path(app_dir, log_id)
    temporary = os.path.join(app_dir, f".{log_id}{LEDGER_SUFFIX}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.pwrite(fd, fmt.pack_ledger(START), 0) != fmt.LEDGER_BYTES:
            raise OSError(errno.ENOSPC, "short write of the ledger")
        reserve(final)
        os.rename(temporary, final)
    except OSError:
        settle(final, None)
        unlink(temporary)
        os.close(fd)
        raise
    return fd


def _open_segment(app_dir: str, log_id: str, seq: int) -> Segment:
    path = segment_path(app_dir, log_id, seq)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    return Segment(seq, os.open(path, flags, 0o600), path, 0)


def _remove_strays(app_dir: str, listing: Listing) -> None:
    """Delete segments without a ledger: acknowledged leftovers (see Log._close_files)."""
    for log_id, files in listing.segments.items():
        for found in files.values():
            if _is_stray(app_dir, listing, log_id, found):
                unlink(found.path)


def _is_stray(app_dir: str, listing: Listing, log_id: str, found: FileInfo) -> bool:
    # A listing is not a snapshot: a log created while it ran can show its first segment
    # and not its ledger (renamed into place just before). Such a segment is new.
    return (
        log_id not in listing.ledgers
        and time.time() - found.mtime > STALE_TEMP_S
        and not os.path.exists(ledger_path(app_dir, log_id))
    )


# -- orphans -----------------------------------------------------------------------------


class Orphan(Log):
    """A claimed log of a dead process: read it, acknowledge (persisted), then release."""

    def __init__(
        self, app_dir: str, log_id: str, ledger_fd: int, acked: Position, segments: list[Segment]
    ) -> None:
        super().__init__(app_dir, log_id, ledger_fd, acked, segments)
        self._total: int | None = None  # records after the ledger's position at the claim
        self._done = 0
        self._was_sent = 0  # records up to this packed position may have arrived already
        self._counted = 0  # resends counted up to this packed position (a rewind re-takes)
        self.resent = 0  # records taken again that the dead process had taken for sending

    @property
    def name(self) -> str:
        """The log's name (``<pid>-<hex>``: the PID of the process that wrote it)."""
        return self._log_id

    def pending(self) -> int:
        """Records not yet acknowledged (counted once, at the claim)."""
        if self._total is None:
            self._scan()
        assert self._total is not None
        return self._total - self._done

    def release(self) -> None:
        """Done: delete the files if all is acknowledged, else unlock them for a later claimer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.torn:
            logger.warning(
                "spool: %d torn or corrupt record(s) skipped in %s", self.torn, self._ledger_path
            )
        empty = self._total is not None and self._total == self._done
        self._close_files(delete=empty or not self._has_data_after_ack())

    def _scan(self) -> None:
        total, corrupt = 0, 0
        for segment in self._segments:
            start = self._acked.offset if segment.seq == self._acked.segment else 0
            batch = fmt.Batch()
            fmt.read(segment.fd, start, segment.size, EVERYTHING, EVERYTHING, batch)
            total += len(batch.payloads)
            corrupt += batch.corrupt
        self._total, self.torn = total, corrupt

    def _settled(self, count: int) -> None:
        self._done += count

    def _taken(self, ends: list[int]) -> None:
        fresh = [end for end in ends if end > self._counted]
        self.resent += sum(1 for end in fresh if end <= self._was_sent)
        if fresh:
            self._counted = fresh[-1]

    def _drop_segment(self, seq: int) -> list[bytes]:
        """For the size limit: delete one segment, returning its unacknowledged records."""
        segment = next((s for s in self._segments if s.seq == seq), None)
        if segment is None:
            return []
        batch = fmt.Batch()
        if seq >= self._acked.segment:
            start = self._acked.offset if seq == self._acked.segment else 0
            fmt.read(segment.fd, start, segment.size, EVERYTHING, EVERYTHING, batch)
        unlink(segment.path)
        self._segments.remove(segment)
        os.close(segment.fd)
        return batch.payloads


def claim_orphan(app_dir: PathLike) -> Orphan | None:
    """Claim one log of a dead process that still has records; None if there is none.

    Exactly one claimer wins each orphan, across processes (the ledger's lock) and across
    threads of this process (the registry). Orphans with nothing left are deleted on the way.
    """
    directory = os.path.realpath(os.fspath(app_dir))
    try:
        listing = list_directory(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        warn_once(f"list:{directory}", "spool: cannot read %s: %s", directory, exc)
        return None
    _remove_stale_temps(listing)
    _remove_strays(directory, listing)
    for log_id in sorted(listing.ledgers, key=lambda name: listing.ledgers[name].mtime):
        orphan = _claim(directory, log_id, scan=True)
        if orphan is None:
            continue
        if orphan.pending():
            return orphan
        orphan.release()  # nothing left in it: deleted
    return None


def _claim(app_dir: str, log_id: str, *, scan: bool) -> Orphan | None:
    path = ledger_path(app_dir, log_id)
    if not reserve(path):
        return None  # this process holds it (its own log, or claimed by another thread)
    fd = lock_existing(path)
    if fd is None:
        settle(path, None)
        return None
    try:
        orphan = _load_orphan(app_dir, log_id, fd)
        if scan:
            orphan._scan()
    except OSError as exc:
        warn_once(f"claim:{path}", "spool: cannot read %s: %s", path, exc)
        os.close(fd)
        settle(path, None)
        return None
    settle(path, orphan)
    return orphan


def _load_orphan(app_dir: str, log_id: str, ledger_fd: int) -> Orphan:
    marks = fmt.unpack_ledger_marks(os.pread(ledger_fd, fmt.LEDGER_BYTES + 1, 0))
    if marks is None:
        warn_once(f"ledger:{log_id}", "spool: unreadable ledger of %s: resending it all", log_id)
        marks = START, START
    acked, sent = marks
    segments: list[Segment] = []
    prefix = f"{log_id}-"
    names = sorted(name for name in os.listdir(app_dir) if name.startswith(prefix))
    for name in names:
        match = SEGMENT_NAME.match(name)
        if match is None or match[1] != log_id:
            continue
        seq, path = int(match[2]), os.path.join(app_dir, name)
        if seq < acked.segment:  # acknowledged; its owner died before deleting it
            unlink(path)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        segments.append(Segment(seq, fd, path, os.fstat(fd).st_size))
    orphan = Orphan(app_dir, log_id, ledger_fd, acked, segments)
    orphan._sent = max(sent, acked)  # kept in the ledger for a claimer after this one
    orphan._was_sent = (sent.segment << SEQ_SHIFT) + sent.offset
    return orphan


def _remove_stale_temps(listing: Listing) -> None:
    now = time.time()
    for temp in listing.temps:
        if now - temp.mtime < STALE_TEMP_S:
            continue
        fd = lock_existing(temp.path)  # held: its creator is alive (and stuck); leave it
        if fd is not None:
            unlink(temp.path)
            os.close(fd)
