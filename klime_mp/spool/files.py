"""The spool's files and their ownership, shared by a process's own log and the orphans it
claims: naming, the per-process registry of held ledgers, locking, directory listing, and
reading and acknowledging records (see ``klime_mp.spool.log`` for the design).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Union

from klime_mp.spool import format as fmt
from klime_mp.spool.format import Position
from klime_mp.spool.registry import held_by as held_by
from klime_mp.spool.registry import lock_existing as lock_existing
from klime_mp.spool.registry import reserve as reserve
from klime_mp.spool.registry import settle as settle

logger = logging.getLogger("klime_mp.spool")

PathLike = Union[str, "os.PathLike[str]"]

LEDGER_SUFFIX = ".ledger"
SEGMENT_SUFFIX = ".seg"
TEMP_NAME = re.compile(r"^\.(\d+-[0-9a-f]{8})\.ledger\.tmp$")
LEDGER_NAME = re.compile(r"^(\d+-[0-9a-f]{8})\.ledger$")
SEGMENT_NAME = re.compile(r"^(\d+-[0-9a-f]{8})-(\d{8})\.seg$")
APP_NAME = re.compile(r"^[0-9a-f]{16}$")
EVERYTHING = 1 << 62  # no limit on a read
# A record's end is kept in flight as one int, segment << SEQ_SHIFT | offset: a plain int
# per record instead of a tuple keeps take() cheap.
SEQ_SHIFT = 40


def pack_position(position: Position) -> int:
    return (position.segment << SEQ_SHIFT) + position.offset


def unpack_position(packed: int) -> Position:
    return Position(packed >> SEQ_SHIFT, packed & ((1 << SEQ_SHIFT) - 1))


# -- warnings ----------------------------------------------------------------------------

_warned: set[str] = set()


def warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned and len(_warned) < 10_000:
        _warned.add(key)
        logger.warning(message, *args)


# -- directory listing -------------------------------------------------------------------


@dataclass
class FileInfo:
    path: str
    size: int
    mtime: float


@dataclass
class Listing:
    ledgers: dict[str, FileInfo]
    segments: dict[str, dict[int, FileInfo]]  # log -> seq -> file
    temps: list[FileInfo]

    def total_bytes(self) -> int:
        return sum(f.size for files in self.segments.values() for f in files.values())


def list_directory(app_dir: str) -> Listing:
    listing = Listing({}, {}, [])
    with os.scandir(app_dir) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found = FileInfo(entry.path, info.st_size, info.st_mtime)
            if not entry.is_file(follow_symlinks=False):
                warn_once(entry.path, "spool: skipping %s (not a regular file)", entry.path)
            elif match := SEGMENT_NAME.match(entry.name):
                listing.segments.setdefault(match[1], {})[int(match[2])] = found
            elif match := LEDGER_NAME.match(entry.name):
                listing.ledgers[match[1]] = found
            elif TEMP_NAME.match(entry.name):
                listing.temps.append(found)
            else:
                warn_once(entry.path, "spool: skipping foreign file %s", entry.path)
    return listing


def segment_path(app_dir: str, log_id: str, seq: int) -> str:
    return os.path.join(app_dir, f"{log_id}-{seq:08d}{SEGMENT_SUFFIX}")


def ledger_path(app_dir: str, log_id: str) -> str:
    return os.path.join(app_dir, f"{log_id}{LEDGER_SUFFIX}")


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def discard(segments: list[Segment]) -> None:
    for segment in segments:
        unlink(segment.path)
        os.close(segment.fd)


# -- reading and acknowledging, shared by own logs and orphans ---------------------------


class Segment:
    __slots__ = ("fd", "first_seq", "layout", "path", "seq", "size")

    def __init__(
        self,
        seq: int,
        fd: int,
        path: str,
        size: int,
        layout: fmt.Layout = fmt.V2,
        first_seq: int | None = None,
    ) -> None:
        self.seq = seq
        self.fd = fd
        self.path = path
        self.size = size  # bytes that hold complete records (own log) or the file size
        self.layout = layout
        self.first_seq = first_seq  # of its first record; None: unknown (a damaged header)


def load_segment(path: str, seq: int) -> Segment | None:
    """A segment file opened for reading, its format recognised; None if it is gone.
    SpoolNewerFormat (the descriptor closed) for a newer klime_mp's file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        layout, first_seq = fmt.classify(os.pread(fd, fmt.READ_AHEAD, 0), path)
        return Segment(seq, fd, path, os.fstat(fd).st_size, layout, first_seq)
    except BaseException:
        os.close(fd)
        raise


class Log:
    """Segments, a read cursor, the records in flight and the persisted acknowledgement.

    ``take``/``acknowledge``/``rewind`` come from one thread at a time (the sender). Only
    they close descriptors, so ``take`` can read outside ``_lock``; a segment dropped by the
    size limit meanwhile bumps ``_generation`` and the read is done again.
    """

    def __init__(
        self, app_dir: str, log_id: str, ledger_fd: int, acked: Position, segments: list[Segment]
    ) -> None:
        self._app_dir = app_dir
        self._log_id = log_id
        self._ledger_path = ledger_path(app_dir, log_id)
        self._ledger_fd = ledger_fd
        self._segments = segments  # ascending seq
        self._dropped: list[Segment] = []  # truncated and unlinked; fd closed by the reader
        self._lock = threading.Lock()
        self._generation = 0
        self._acked = acked
        self._cursor = acked
        self._sent = acked  # the furthest position ever taken for sending (persisted)
        self._in_flight: deque[int] = deque()  # end of each taken record, see unpack_position
        self._unwritten: bytes | None = None  # the ledger record the sender writes next
        self._freeing: list[Segment] = []  # acknowledged, being deleted by the sender
        self._closed = False
        self.torn = 0

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        """The next records after the read cursor, within the limits (at least one)."""
        check_limit("max_events", max_events)
        check_limit("max_bytes", max_bytes)
        self._close_dropped()
        taken = self._read(max_events, max_bytes)
        self._write_ledger()  # the sent mark: before the records can be sent
        return taken

    def _read(self, max_events: int, max_bytes: int) -> list[bytes]:
        while True:
            with self._lock:
                self._check_open()
                generation, cursor = self._generation, self._cursor
                taken = self._take_unread(cursor, max_events, max_bytes)
                if taken:
                    return taken
                view = [
                    (s.seq, s.fd, s.size, s.layout)
                    for s in self._segments
                    if s.seq >= cursor.segment
                ]
                appended = self._appended_seq()
            batch = fmt.Batch()
            ends: list[int] = []
            last = cursor
            for seq, fd, size, layout in view:
                offset = cursor.offset if seq == cursor.segment else 0
                before = len(batch.ends)
                stop = fmt.read(fd, offset, size, max_events, max_bytes, batch, layout)
                ends.extend(map((seq << SEQ_SHIFT).__add__, batch.ends[before:]))
                last = Position(seq, stop)
                if stop < size or len(batch.payloads) >= max_events:
                    break
            with self._lock:
                if generation != self._generation:
                    continue  # a segment was dropped under the read: read again
                at_end = bool(view) and last == Position(view[-1][0], view[-1][2])
                self._count_torn(batch, appended if at_end else None)
                self._advance(last, ends, batch.seqs)
            return batch.payloads

    def _advance(self, last: Position, ends: list[int], seqs: list[int]) -> None:
        """Records ending at ``ends`` (numbered ``seqs``), up to ``last``, were taken.
        Caller holds ``_lock``."""
        self._cursor = last
        self._in_flight.extend(ends)
        self._taken(ends, seqs)
        if ends and last > self._sent:  # one pwrite per batch: what may arrive
            self._sent = last
            self._unwritten = fmt.pack_ledger(self._acked, self._sent)

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
            self._acked = unpack_position(self._in_flight.popleft())
            self._settled(count)
            self._unwritten = fmt.pack_ledger(self._acked, self._sent)
            freed = self._free_acknowledged()
            self._freeing += freed
        self._write_ledger()  # then delete: a crash between them leaves no ledger behind
        if freed:
            discard(freed)
            with self._lock:  # gone: acknowledged_bytes stops counting them
                self._freeing = [s for s in self._freeing if s not in freed]
        self._close_dropped()

    def rewind(self) -> None:
        """Forget what was taken and not acknowledged: read it again from the ledger's place."""
        with self._lock:
            self._check_open()
            self._cursor = self._acked
            self._in_flight.clear()

    def _write_ledger(self) -> None:
        # The sender's alone, outside _lock: an append never waits on this pwrite (a GIL
        # round trip), and one thread writing keeps the records in order.
        record, self._unwritten = self._unwritten, None
        if record is None:
            return
        try:
            os.pwrite(self._ledger_fd, record, 0)
        except OSError as exc:  # kept in memory; a successor would resend (ids dedupe)
            warn_once(f"ack:{self._app_dir}", "spool: cannot record acknowledgement: %s", exc)

    def _free_acknowledged(self) -> list[Segment]:
        """Take the segments whose records are all acknowledged off the list (caller holds
        ``_lock``); the caller deletes them (``discard``) once it has released it."""
        acked, freed = self._acked, []
        while self._segments and not self._is_active(self._segments[0]):
            first = self._segments[0]
            done = first.seq < acked.segment or (
                first.seq == acked.segment and acked.offset >= first.size
            )
            if not done:
                break
            freed.append(self._segments.pop(0))
        return freed

    def _close_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, []
        for segment in dropped:
            os.close(segment.fd)

    def _has_data_after_ack(self) -> bool:
        acked = self._acked
        return any(
            s.size > max(s.layout.start, acked.offset if s.seq == acked.segment else 0)
            for s in self._segments
            if s.seq >= acked.segment
        )

    def _close_files(self, delete: bool) -> None:
        # Files are deleted only once everything in them is acknowledged, and the ledger
        # first (still locked): a segment found without its ledger is such a leftover
        # (its deleter died half-way), never part of a live or an unread log.
        if delete:
            unlink(self._ledger_path)
        for segment in self._segments + self._dropped:
            if delete:
                unlink(segment.path)
            os.close(segment.fd)
        self._segments, self._dropped = [], []
        os.close(self._ledger_fd)  # drops the lock: last
        settle(self._ledger_path, None)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the spool log is closed")

    # Hooks for the two kinds of log.
    def _is_active(self, segment: Segment) -> bool:
        return False

    def _settled(self, count: int) -> None:
        pass

    def _count_torn(self, batch: fmt.Batch, appended: int | None) -> None:
        """A read from disk is done (``appended``: it reached the end of the data, where
        the record numbered ``appended`` was the last written, when known)."""

    def _appended_seq(self) -> int | None:
        return None

    def _taken(self, ends: list[int], seqs: list[int]) -> None:
        pass

    def _take_unread(self, cursor: Position, max_events: int, max_bytes: int) -> list[bytes]:
        """Records after ``cursor`` served without reading the disk (none here). Caller
        holds ``_lock``; what it returns has been taken (``_advance``)."""
        return []

    def acknowledged_position(self) -> Position:
        with self._lock:
            return self._acked


def check_limit(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
