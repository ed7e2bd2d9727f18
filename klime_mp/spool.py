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
process. The PID in the name is only for people reading the directory.

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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from klime_mp import spool_format as fmt
from klime_mp.spool_format import START, Position

logger = logging.getLogger(__name__)

# 256 MiB per app directory: at ~300 bytes an event, about 900,000 events, so hours of a
# busy app's traffic through a backend outage, while still small next to any disk a server
# writes logs to. Set it lower in containers with a small ephemeral-storage limit.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SEGMENT_BYTES = 4 * 1024 * 1024
CHECK_EVERY_BYTES = 1024 * 1024
SPOOL_FULL = "spool_full"  # the on_loss reason when the size limit drops records
STALE_TEMP_S = 60.0  # a ledger still under its temporary name this long was left by a crash

LEDGER_SUFFIX = ".ledger"
SEGMENT_SUFFIX = ".seg"
_TEMP = re.compile(r"^\.(\d+-[0-9a-f]{8})\.ledger\.tmp$")
_LEDGER_NAME = re.compile(r"^(\d+-[0-9a-f]{8})\.ledger$")
_SEGMENT_NAME = re.compile(r"^(\d+-[0-9a-f]{8})-(\d{8})\.seg$")
APP_NAME = re.compile(r"^[0-9a-f]{16}$")
_EVERYTHING = 1 << 62  # no limit on a read
# A record's end is kept in flight as one int, segment << _SEQ_SHIFT | offset: a plain int
# per record instead of a tuple keeps take() cheap.
_SEQ_SHIFT = 40


def _position(packed: int) -> Position:
    return Position(packed >> _SEQ_SHIFT, packed & ((1 << _SEQ_SHIFT) - 1))

PathLike = Union[str, "os.PathLike[str]"]
LossCallback = Callable[[str, list[bytes]], None]


class SpoolUnavailable(Exception):
    """The spool directory cannot be used; the message says why."""


def app_directory(spool_dir: PathLike, endpoint: str, write_key: str) -> Path:
    """The directory of one app's logs: a digest of endpoint and key, never the key."""
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    if not isinstance(write_key, str):
        raise TypeError(f"write_key must be a str, got {type(write_key).__name__}")
    digest = hashlib.sha256(f"{endpoint}\0{write_key}".encode()).hexdigest()[:16]
    return Path(spool_dir) / digest


# -- warnings ----------------------------------------------------------------------------

_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned and len(_warned) < 10_000:
        _warned.add(key)
        logger.warning(message, *args)


# -- the per-process registry of held ledgers --------------------------------------------


class _Registry:
    """The ledgers this process holds a lock on (own logs and claimed orphans), by path."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.held: dict[str, _Log | None] = {}  # None: being claimed right now


_registry = _Registry()


def _this_process() -> _Registry:
    # A forked child (also one forked from C, which runs no at-fork hook) holds none of
    # its parent's locks: it gets an empty registry and a new lock, never the inherited one.
    global _registry
    if _registry.pid != os.getpid():
        _registry = _Registry()
    return _registry


def _reserve(key: str) -> bool:
    registry = _this_process()
    with registry.lock:
        if key in registry.held:
            return False
        registry.held[key] = None
        return True


def _settle(key: str, holder: _Log | None) -> None:
    registry = _this_process()
    with registry.lock:
        if holder is None:
            registry.held.pop(key, None)
        else:
            registry.held[key] = holder


def _held(key: str) -> _Log | bool | None:
    """The holder in this process, None while it is being claimed, False if not held."""
    registry = _this_process()
    with registry.lock:
        return registry.held.get(key, False)


def _lock_existing(path: str) -> int | None:
    """A descriptor holding the exclusive lock on ``path``, or None if it is held elsewhere
    or gone. Only call for a path reserved in the registry (see the module docstring)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except OSError:  # held by a live process (EAGAIN/EACCES), or deleted meanwhile
        pass
    os.close(fd)
    return None


# -- directory listing -------------------------------------------------------------------


@dataclass
class _File:
    path: str
    size: int
    mtime: float


@dataclass
class _Listing:
    ledgers: dict[str, _File]
    segments: dict[str, dict[int, _File]]  # log -> seq -> file
    temps: list[_File]

    def total_bytes(self) -> int:
        return sum(f.size for files in self.segments.values() for f in files.values())


def _list(app_dir: str) -> _Listing:
    listing = _Listing({}, {}, [])
    with os.scandir(app_dir) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found = _File(entry.path, info.st_size, info.st_mtime)
            if not entry.is_file(follow_symlinks=False):
                _warn_once(entry.path, "spool: skipping %s (not a regular file)", entry.path)
            elif match := _SEGMENT_NAME.match(entry.name):
                listing.segments.setdefault(match[1], {})[int(match[2])] = found
            elif match := _LEDGER_NAME.match(entry.name):
                listing.ledgers[match[1]] = found
            elif _TEMP.match(entry.name):
                listing.temps.append(found)
            else:
                _warn_once(entry.path, "spool: skipping foreign file %s", entry.path)
    return listing


def _segment_path(app_dir: str, log_id: str, seq: int) -> str:
    return os.path.join(app_dir, f"{log_id}-{seq:08d}{SEGMENT_SUFFIX}")


def _ledger_path(app_dir: str, log_id: str) -> str:
    return os.path.join(app_dir, f"{log_id}{LEDGER_SUFFIX}")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- reading and acknowledging, shared by own logs and orphans ---------------------------


class _Segment:
    __slots__ = ("fd", "path", "seq", "size")

    def __init__(self, seq: int, fd: int, path: str, size: int) -> None:
        self.seq = seq
        self.fd = fd
        self.path = path
        self.size = size  # bytes that hold complete records (own log) or the file size


class _Log:
    """Segments, a read cursor, the records in flight and the persisted acknowledgement.

    ``take``/``acknowledge``/``rewind`` come from one thread at a time (the sender). Only
    they close descriptors, so ``take`` can read outside ``_lock``; a segment dropped by the
    size limit meanwhile bumps ``_generation`` and the read is done again.
    """

    def __init__(
        self, app_dir: str, log_id: str, ledger_fd: int, acked: Position, segments: list[_Segment]
    ) -> None:
        self._app_dir = app_dir
        self._log_id = log_id
        self._ledger_path = _ledger_path(app_dir, log_id)
        self._ledger_fd = ledger_fd
        self._segments = segments  # ascending seq
        self._dropped: list[_Segment] = []  # truncated and unlinked; fd closed by the reader
        self._lock = threading.Lock()
        self._generation = 0
        self._acked = acked
        self._cursor = acked
        self._in_flight: deque[int] = deque()  # end of each taken record, see _position
        self._closed = False
        self.torn = 0

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        """The next records after the read cursor, within the limits (at least one)."""
        _check_limit("max_events", max_events)
        _check_limit("max_bytes", max_bytes)
        self._close_dropped()
        while True:
            with self._lock:
                self._check_open()
                generation, cursor = self._generation, self._cursor
                view = [(s.seq, s.fd, s.size) for s in self._segments if s.seq >= cursor.segment]
            batch = fmt.Batch()
            ends: list[int] = []
            last = cursor
            for seq, fd, size in view:
                offset = cursor.offset if seq == cursor.segment else 0
                before = len(batch.ends)
                stop = fmt.read(fd, offset, size, max_events, max_bytes, batch)
                ends.extend(map((seq << _SEQ_SHIFT).__add__, batch.ends[before:]))
                last = Position(seq, stop)
                if stop < size or len(batch.payloads) >= max_events:
                    break
            with self._lock:
                if generation != self._generation:
                    continue  # a segment was dropped under the read: read again
                self._cursor = last
                self._in_flight.extend(ends)
                self._count_torn(cursor, last, batch.corrupt)
            return batch.payloads

    def acknowledge(self, count: int) -> None:
        """Settle the oldest ``count`` taken records: persist the position, free segments."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"count must be an int, got {type(count).__name__}")
        with self._lock:
            self._check_open()
            if not 0 <= count <= len(self._in_flight):
                raise ValueError(
                    f"count must be between 0 and {len(self._in_flight)} (records taken and "
                    f"not acknowledged), got {count}"
                )
            if count == 0:
                return
            for _ in range(count - 1):
                self._in_flight.popleft()
            self._acked = _position(self._in_flight.popleft())
            self._settled(count)
            self._persist()
            self._free_acknowledged()
        self._close_dropped()

    def rewind(self) -> None:
        """Forget what was taken and not acknowledged: read it again from the ledger's place."""
        with self._lock:
            self._check_open()
            self._cursor = self._acked
            self._in_flight.clear()

    def _persist(self) -> None:
        try:
            os.pwrite(self._ledger_fd, fmt.pack_ledger(self._acked), 0)
        except OSError as exc:  # kept in memory; a successor would resend (ids dedupe)
            _warn_once(f"ack:{self._app_dir}", "spool: cannot record acknowledgement: %s", exc)

    def _free_acknowledged(self) -> None:
        acked = self._acked
        while self._segments and not self._is_active(self._segments[0]):
            first = self._segments[0]
            done = first.seq < acked.segment or (
                first.seq == acked.segment and acked.offset >= first.size
            )
            if not done:
                return
            self._segments.pop(0)
            _unlink(first.path)
            os.close(first.fd)

    def _close_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        for segment in dropped:
            os.close(segment.fd)

    def _has_data_after_ack(self) -> bool:
        acked = self._acked
        return any(
            s.seq > acked.segment or (s.seq == acked.segment and s.size > acked.offset)
            for s in self._segments
        )

    def _close_files(self, delete: bool) -> None:
        # Segments before the ledger: a log found without its ledger is never a live one.
        for segment in self._segments + self._dropped:
            if delete:
                _unlink(segment.path)
            os.close(segment.fd)
        self._segments, self._dropped = [], []
        if delete:
            _unlink(self._ledger_path)
        os.close(self._ledger_fd)  # drops the lock: last
        _settle(self._ledger_path, None)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the spool log is closed")

    # Hooks for the two kinds of log.
    def _is_active(self, segment: _Segment) -> bool:
        return False

    def _settled(self, count: int) -> None:
        pass

    def _count_torn(self, start: Position, end: Position, corrupt: int) -> None:
        pass

    def _acknowledged_position(self) -> Position:
        with self._lock:
            return self._acked


def _check_limit(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


# -- this process's own log --------------------------------------------------------------


class EventLog(_Log):
    """This process's log for one app. ``append`` comes from one thread at a time (the
    caller holds its own lock); ``take``/``acknowledge``/``rewind`` from the sender."""

    def __init__(
        self,
        app_dir: str,
        log_id: str,
        ledger_fd: int,
        first: _Segment,
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

    @classmethod
    def open(cls, app_dir: PathLike, *, max_bytes: int, on_loss: LossCallback) -> EventLog:
        """A new log in ``app_dir`` (created 0700); SpoolUnavailable if it cannot be used.

        ``on_loss(reason, records)`` is called when the size limit deletes records. It runs
        inside ``append`` (so under the caller's append lock, which it must not take again)
        and never inside this log's own lock.
        """
        _check_limit("max_bytes", max_bytes)
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
            _unlink(_ledger_path(directory, log_id))
            os.close(ledger_fd)
            _settle(_ledger_path(directory, log_id), None)
            raise SpoolUnavailable(f"cannot write in {directory}: {exc}") from exc
        log = cls(directory, log_id, ledger_fd, first, max_bytes, on_loss)
        _settle(log._ledger_path, log)
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

    def _undo_short_write(self, segment: _Segment, written: int) -> None:
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
            listing = _list(self._app_dir)
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
        self, listing: _Listing, orphans: dict[str, Orphan | None], log_id: str, seq: int
    ) -> list[bytes] | None:
        """Delete one segment; its unacknowledged records, or None if it must stay."""
        if log_id == self._log_id:
            return self._drop_own(seq)
        if log_id not in listing.ledgers:  # a stray segment without a log: nobody's
            path = listing.segments[log_id][seq].path
            return _drop_stray(path)
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
            if flight and flight[0] >> _SEQ_SHIFT <= seq <= flight[-1] >> _SEQ_SHIFT:
                return None  # its records are being sent: they will be acknowledged
            cursor = self._cursor
            start = cursor.offset if cursor.segment == seq else 0
            batch = fmt.Batch()
            if cursor.segment <= seq:
                fmt.read(segment.fd, start, segment.size, _EVERYTHING, _EVERYTHING, batch)
            os.ftruncate(segment.fd, 0)  # frees the space now; the reader closes the fd
            _unlink(segment.path)
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

    def _is_active(self, segment: _Segment) -> bool:
        return segment is self._active

    def _settled(self, count: int) -> None:
        self._settled_count += count

    def _count_torn(self, start: Position, end: Position, corrupt: int) -> None:
        if start >= self._seen:
            self.torn += corrupt
            if corrupt:
                _warn_once(
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
    final = _ledger_path(app_dir, log_id)
    temporary = os.path.join(app_dir, f".{log_id}{LEDGER_SUFFIX}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.pwrite(fd, fmt.pack_ledger(START), 0) != fmt.LEDGER_BYTES:
            raise OSError(errno.ENOSPC, "short write of the ledger")
        _reserve(final)
        os.rename(temporary, final)
    except OSError:
        _settle(final, None)
        _unlink(temporary)
        os.close(fd)
        raise
    return fd


def _open_segment(app_dir: str, log_id: str, seq: int) -> _Segment:
    path = _segment_path(app_dir, log_id, seq)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    return _Segment(seq, os.open(path, flags, 0o600), path, 0)


def _drop_stray(path: str) -> list[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        batch = fmt.Batch()
        fmt.read(fd, 0, os.fstat(fd).st_size, _EVERYTHING, _EVERYTHING, batch)
        _unlink(path)
    finally:
        os.close(fd)
    return batch.payloads


# -- orphans -----------------------------------------------------------------------------


class Orphan(_Log):
    """A claimed log of a dead process: read it, acknowledge (persisted), then release."""

    def __init__(
        self, app_dir: str, log_id: str, ledger_fd: int, acked: Position, segments: list[_Segment]
    ) -> None:
        super().__init__(app_dir, log_id, ledger_fd, acked, segments)
        self._total: int | None = None  # records after the ledger's position at the claim
        self._done = 0

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
            fmt.read(segment.fd, start, segment.size, _EVERYTHING, _EVERYTHING, batch)
            total += len(batch.payloads)
            corrupt += batch.corrupt
        self._total, self.torn = total, corrupt

    def _settled(self, count: int) -> None:
        self._done += count

    def _drop_segment(self, seq: int) -> list[bytes]:
        """For the size limit: delete one segment, returning its unacknowledged records."""
        segment = next((s for s in self._segments if s.seq == seq), None)
        if segment is None:
            return []
        batch = fmt.Batch()
        if seq >= self._acked.segment:
            start = self._acked.offset if seq == self._acked.segment else 0
            fmt.read(segment.fd, start, segment.size, _EVERYTHING, _EVERYTHING, batch)
        _unlink(segment.path)
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
        listing = _list(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        _warn_once(f"list:{directory}", "spool: cannot read %s: %s", directory, exc)
        return None
    _remove_stale_temps(listing)
    for log_id in sorted(listing.ledgers, key=lambda name: listing.ledgers[name].mtime):
        orphan = _claim(directory, log_id, scan=True)
        if orphan is None:
            continue
        if orphan.pending():
            return orphan
        orphan.release()  # nothing left in it: deleted
    return None


def _claim(app_dir: str, log_id: str, *, scan: bool) -> Orphan | None:
    path = _ledger_path(app_dir, log_id)
    if not _reserve(path):
        return None  # this process holds it (its own log, or claimed by another thread)
    fd = _lock_existing(path)
    if fd is None:
        _settle(path, None)
        return None
    try:
        orphan = _load_orphan(app_dir, log_id, fd)
        if scan:
            orphan._scan()
    except OSError as exc:
        _warn_once(f"claim:{path}", "spool: cannot read %s: %s", path, exc)
        os.close(fd)
        _settle(path, None)
        return None
    _settle(path, orphan)
    return orphan


def _load_orphan(app_dir: str, log_id: str, ledger_fd: int) -> Orphan:
    acked = fmt.unpack_ledger(os.pread(ledger_fd, fmt.LEDGER_BYTES + 1, 0))
    if acked is None:
        _warn_once(f"ledger:{log_id}", "spool: unreadable ledger of %s: resending it all", log_id)
        acked = START
    segments: list[_Segment] = []
    prefix = f"{log_id}-"
    names = sorted(name for name in os.listdir(app_dir) if name.startswith(prefix))
    for name in names:
        match = _SEGMENT_NAME.match(name)
        if match is None or match[1] != log_id:
            continue
        seq, path = int(match[2]), os.path.join(app_dir, name)
        if seq < acked.segment:  # acknowledged; its owner died before deleting it
            _unlink(path)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        segments.append(_Segment(seq, fd, path, os.fstat(fd).st_size))
    return Orphan(app_dir, log_id, ledger_fd, acked, segments)


def _remove_stale_temps(listing: _Listing) -> None:
    now = time.time()
    for temp in listing.temps:
        if now - temp.mtime < STALE_TEMP_S:
            continue
        fd = _lock_existing(temp.path)  # held: its creator is alive (and stuck); leave it
        if fd is not None:
            _unlink(temp.path)
            os.close(fd)


# -- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppStatus:
    """One app directory, as ``status`` found it."""

    app: str  # the directory name (digest of endpoint and key)
    path: Path
    segments: int
    pending: int  # records after each log's acknowledged position (in flight included)
    bytes: int  # size of the segment files
    oldest_pending_age: float | None  # seconds since the oldest pending record was written
    live: int  # logs held by a live process (writers, and claimers of orphans)
    orphans: int  # logs of dead processes waiting for a claimer
    torn: int  # corrupt regions in orphans (a live writer's tail may be mid-write)


def status(spool_dir: PathLike) -> list[AppStatus]:
    """What is in every app directory under ``spool_dir``. Read-only: it takes a shared
    lock on a ledger for an instant (to tell live from dead) and nothing else."""
    return [_app_status(app_dir) for app_dir in app_directories(spool_dir)]


def app_directories(spool_dir: PathLike) -> list[Path]:
    """The app directories under ``spool_dir`` (anything else is skipped with a warning)."""
    found: list[Path] = []
    for entry in sorted(Path(spool_dir).iterdir()):
        if entry.is_dir() and APP_NAME.match(entry.name):
            found.append(entry)
        else:
            _warn_once(str(entry), "spool: skipping %s (not an app directory)", entry)
    return found


def _app_status(app_dir: Path) -> AppStatus:
    directory = os.path.realpath(app_dir)
    listing = _list(directory)
    live = orphans = pending = torn = 0
    oldest: float | None = None
    for log_id in listing.ledgers:
        alive, acked = _inspect(_ledger_path(directory, log_id))
        live += alive
        orphans += not alive
        files = listing.segments.get(log_id, {})
        for seq in sorted(files):
            count, corrupt, first = _count(files[seq].path, acked, seq)
            pending, torn = pending + count, torn + (0 if alive else corrupt)
            if first is not None and (oldest is None or first < oldest):
                oldest = first
    age = None if oldest is None else max(0.0, time.time() - oldest)
    return AppStatus(
        app=app_dir.name,
        path=app_dir,
        segments=sum(len(files) for files in listing.segments.values()),
        pending=pending,
        bytes=listing.total_bytes(),
        oldest_pending_age=age,
        live=live,
        orphans=orphans,
        torn=torn,
    )


def _inspect(ledger: str) -> tuple[bool, Position]:
    """Whether a live process holds the ledger, and its acknowledged position."""
    holder = _held(ledger)
    if isinstance(holder, _Log):
        return True, holder._acknowledged_position()
    if holder is None or not _reserve(ledger):  # being claimed by a thread of ours
        return True, START
    try:  # reserved: no thread of ours can lock it while this descriptor is open
        fd = os.open(ledger, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        _settle(ledger, None)
        return False, START
    try:
        acked = fmt.unpack_ledger(os.pread(fd, fmt.LEDGER_BYTES + 1, 0)) or START
        try:  # a shared lock is refused only while some process holds the exclusive one
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True, acked
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False, acked
    finally:
        os.close(fd)
        _settle(ledger, None)


def _count(path: str, acked: Position, seq: int) -> tuple[int, int, float | None]:
    """Pending records in one segment, corrupt regions, and the first one's append time."""
    if seq < acked.segment:
        return 0, 0, None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0, 0, None
    try:
        start = acked.offset if seq == acked.segment else 0
        batch = fmt.Batch()
        fmt.read(fd, start, os.fstat(fd).st_size, _EVERYTHING, _EVERYTHING, batch)
        first = None
        if batch.payloads:
            offset = batch.ends[0] - len(batch.payloads[0]) - fmt.HEADER_BYTES
            first = fmt.record_time(fd, offset)
        return len(batch.payloads), batch.corrupt, first
    finally:
        os.close(fd)
