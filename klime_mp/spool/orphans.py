"""Logs of dead processes: finding them, claiming one (exactly one claimer wins it, across
processes and threads), reading and acknowledging it, and releasing it.

Nothing here writes to this process's own log: a successor with no free space left (or
``klime-mp spool drain``) empties a full directory with it, since claiming, reading,
acknowledging in place and deleting never need a byte more on disk.
"""

from __future__ import annotations

import logging
import os
import time
from typing import NamedTuple

from klime_mp.errors import SpoolForeignOwner, SpoolNewerFormat
from klime_mp.spool import format as fmt
from klime_mp.spool.files import (
    EVERYTHING,
    SEGMENT_NAME,
    SEQ_SHIFT,
    FileInfo,
    Listing,
    Log,
    PathLike,
    Segment,
    ledger_path,
    list_directory,
    load_segment,
    lock_existing,
    reserve,
    settle,
    unlink,
    warn_once,
)
from klime_mp.spool.format import START, Position

logger = logging.getLogger(__name__)

# A ledger still under its temporary name this long, or a segment without a ledger this old,
# was left by a crash (younger ones may belong to a log being created right now).
STALE_TEMP_S = 60.0


def remove_strays(app_dir: str, listing: Listing) -> None:
    """Delete segments without a ledger: acknowledged leftovers (see Log._close_files)."""
    for log_id, files in listing.segments.items():
        for found in files.values():
            if is_stray(app_dir, listing, log_id, found):
                unlink(found.path)


def is_stray(app_dir: str, listing: Listing, log_id: str, found: FileInfo) -> bool:
    # A listing is not a snapshot: a log created while it ran can show its first segment
    # and not its ledger (renamed into place just before). Such a segment is new.
    return (
        log_id not in listing.ledgers
        and time.time() - found.mtime > STALE_TEMP_S
        and not os.path.exists(ledger_path(app_dir, log_id))
        and not _is_newer(found.path)
    )


def _is_newer(path: str) -> bool:
    """A newer klime_mp's file, whose rules for leftovers this version does not know, or
    another user's: neither is ours to delete."""
    try:
        segment = load_segment(path, 0)
        if segment is not None:
            try:
                check_owner(segment.fd, path)
            finally:
                os.close(segment.fd)
    except (SpoolNewerFormat, SpoolForeignOwner) as exc:
        warn_once(f"leave:{path}", "spool: leaving %s as it is: %s", path, exc)
        return True
    except OSError:
        return False
    return False


class Orphan(Log):
    """A claimed log of a dead process: read it, acknowledge (persisted), then release."""

    def __init__(
        self,
        app_dir: str,
        log_id: str,
        ledger_fd: int,
        marks: tuple[Position, Position],
        segments: list[Segment],
    ) -> None:
        acked, sent = marks
        super().__init__(app_dir, log_id, ledger_fd, acked, segments)
        self._sent = max(sent, acked)  # kept in the ledger for a claimer after this one
        self._total: int | None = None  # records after the ledger's position at the claim
        self._done = 0
        # records up to this packed position may have arrived already
        self._was_sent = (sent.segment << SEQ_SHIFT) + sent.offset
        self._counted = 0  # resends counted up to this packed position (a rewind re-takes)
        self.resent = 0  # records taken again that the dead process had taken for sending

    @property
    def name(self) -> str:
        """The log's name (``<pid>-<hex>``: the PID of the process that wrote it)."""
        return self._log_id

    def pending(self) -> int:
        """Records not yet acknowledged (counted once, at the claim)."""
        if self._total is None:
            self.scan()
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

    def scan(self) -> None:
        """Count the records after the acknowledged position, and the events lost in
        damaged regions (see ``scan``)."""
        found = scan(self._segments, self._acked)
        self._total, self.torn = found.pending, found.lost

    def _settled(self, count: int) -> None:
        self._done += count

    def _taken(self, ends: list[int], seqs: list[int]) -> None:
        fresh = [end for end in ends if end > self._counted]
        self.resent += sum(1 for end in fresh if end <= self._was_sent)
        if fresh:
            self._counted = fresh[-1]

    def drop_segment(self, seq: int) -> list[bytes]:
        """For the size limit: delete one segment, returning its unacknowledged records."""
        segment = next((s for s in self._segments if s.seq == seq), None)
        if segment is None:
            return []
        batch = fmt.Batch()
        if seq >= self._acked.segment:
            start = self._acked.offset if seq == self._acked.segment else 0
            fmt.read(segment.fd, start, segment.size, EVERYTHING, EVERYTHING, batch, segment.layout)
        unlink(segment.path)
        self._segments.remove(segment)
        os.close(segment.fd)
        return batch.payloads


class Scan(NamedTuple):
    pending: int  # intact records after the acknowledged position
    lost: int  # events lost in damaged regions there
    oldest: float | None  # when the first of them was appended


def scan(segments: list[Segment], acked: Position) -> Scan:
    """What a log holds after ``acked``. Losses are counted in events by the gaps in the
    records' sequence numbers (a damaged tail, with nothing intact after it, counts as one,
    the least it can be); in a version-1 file, without numbers, one per damaged region."""
    total, lost, tail = 0, 0, False
    oldest: float | None = None
    before: int | None = None  # the number of the last record before the reading
    for segment in segments:
        layout = segment.layout
        start = acked.offset if segment.seq == acked.segment else 0
        batch = fmt.Batch()
        fmt.read(segment.fd, start, segment.size, EVERYTHING, EVERYTHING, batch, layout)
        total += len(batch.payloads)
        if oldest is None and batch.payloads:
            at = batch.ends[0] - len(batch.payloads[0]) - layout.header
            oldest = fmt.record_time(segment.fd, at, layout)
        first = segment.first_seq
        if before is None:
            before = _number_before(segment, start)
        elif first is not None and first - 1 > before:  # the previous segment's tail
            lost, tail = lost + first - 1 - before, False
            before = first - 1
        if not layout.sequenced or before is None:
            lost += batch.corrupt  # no numbers to count with
            before = None
            continue
        lost += fmt.gaps(batch.seqs, before, before)
        before = batch.seqs[-1] if batch.seqs else before
        tail = batch.tail
    return Scan(total, lost + tail, oldest)


def _number_before(segment: Segment, start: int) -> int | None:
    """The number of the record just before ``start`` in ``segment`` (read from the
    segment's beginning), or None when nothing says it."""
    layout = segment.layout
    if not layout.sequenced:
        return None
    if start > layout.start:
        prefix = fmt.Batch()
        fmt.read(segment.fd, 0, start, EVERYTHING, EVERYTHING, prefix, layout)
        if prefix.seqs:
            return prefix.seqs[-1]
    return None if segment.first_seq is None else segment.first_seq - 1


def claim_orphan(app_dir: PathLike) -> Orphan | None:
    """Claim one log of a dead process that still has records; None if there is none.

    Exactly one claimer wins each orphan, across processes (the ledger's lock) and across
    threads of this process (the registry). Orphans with nothing left are deleted on the way;
    one whose records are all damaged is returned (``torn`` says how many events that cost),
    so that the loss is counted before its files go. A log in a newer format is left alone.
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
    remove_strays(directory, listing)
    for log_id in sorted(listing.ledgers, key=lambda name: listing.ledgers[name].mtime):
        orphan = claim(directory, log_id, scan=True)
        if orphan is None:
            continue
        if orphan.pending() or orphan.torn:
            return orphan
        orphan.release()  # nothing left in it: deleted
    return None


def claim(app_dir: str, log_id: str, *, scan: bool) -> Orphan | None:
    """Claim the log ``log_id`` if its writer is dead and nobody holds it; ``scan`` counts
    its records (for ``pending``) at once."""
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
            orphan.scan()
    except (SpoolNewerFormat, SpoolForeignOwner) as exc:
        warn_once(f"leave:{path}", "spool: leaving %s as it is: %s", log_id, exc)
        os.close(fd)
        settle(path, None)
        return None
    except OSError as exc:
        warn_once(f"claim:{path}", "spool: cannot read %s: %s", path, exc)
        os.close(fd)
        settle(path, None)
        return None
    settle(path, orphan)
    return orphan


def check_owner(fd: int, path: str) -> None:
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        raise SpoolForeignOwner(f"{path} belongs to uid {owner}, not to this process's")


def _load_orphan(app_dir: str, log_id: str, ledger_fd: int) -> Orphan:
    path = ledger_path(app_dir, log_id)
    check_owner(ledger_fd, path)
    raw = os.pread(ledger_fd, fmt.LEDGER_BYTES + 1, 0)
    if fmt.ledger_is_newer(raw):
        raise SpoolNewerFormat(path, f"{raw[:4]!r}")
    marks = fmt.unpack_ledger_marks(raw)
    if marks is None:
        warn_once(f"ledger:{log_id}", "spool: unreadable ledger of %s: resending it all", log_id)
        marks = START, START
    acked, sent = marks
    segments: list[Segment] = []
    prefix = f"{log_id}-"
    names = sorted(name for name in os.listdir(app_dir) if name.startswith(prefix))
    try:
        for name in names:
            match = SEGMENT_NAME.match(name)
            if match is None or match[1] != log_id:
                continue
            seq, segment_file = int(match[2]), os.path.join(app_dir, name)
            if seq < acked.segment:  # acknowledged; its owner died before deleting it
                unlink(segment_file)
                continue
            segment = load_segment(segment_file, seq)
            if segment is not None:
                segments.append(segment)
                check_owner(segment.fd, segment_file)
    except BaseException:
        for segment in segments:
            os.close(segment.fd)
        raise
    return Orphan(app_dir, log_id, ledger_fd, (acked, sent), segments)


def _remove_stale_temps(listing: Listing) -> None:
    now = time.time()
    for temp in listing.temps:
        if now - temp.mtime < STALE_TEMP_S:
            continue
        fd = lock_existing(temp.path)  # held: its creator is alive (and stuck); leave it
        if fd is not None:
            unlink(temp.path)
            os.close(fd)
