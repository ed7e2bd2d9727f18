"""The records a process appended to its own spool log and its sender has not read yet,
kept in memory so that a sender keeping up takes them without reading them back (a
``pread`` and a checksum per record otherwise: 1.4 of the 1.6 us per event that taking
and acknowledging cost).

Only the newest records are kept, as one contiguous run ending at the last append, at most
``MAX_BYTES`` of them. The sender takes from memory only when its read cursor is exactly
where the run begins; anywhere else (a backlog longer than the run, a rewind after a failed
send, a run cut by a failed write or by the size limit) it reads the disk, and the run is
trimmed to what lies after the cursor. The disk stays the truth: what memory serves is
acknowledged on disk like any other record, and a successor reads the files.

Positions are packed ints (``segment << SEQ_SHIFT | offset``), as the log's in-flight ends.
Not thread-safe: the log calls it under its own lock.
"""

from __future__ import annotations

from collections import deque

# About 3,500 events of 300 bytes: a sender that far behind reads the disk.
MAX_BYTES = 1024 * 1024


class Unread:
    def __init__(self, origin: int, max_bytes: int = MAX_BYTES) -> None:
        """``origin``: the packed position where the log's reading starts."""
        self._max_bytes = max_bytes
        self._records: deque[tuple[int, bytes]] = deque()  # (end, payload)
        self._bytes = 0
        # Where the run begins, as a reader's cursor says it: the end of the record before
        # the run's first one, or the origin. Records follow each other with nothing in
        # between (one appender; a failed write is cut off or followed by a new segment,
        # where a reader goes on), so the run needs no other check.
        self._start = origin
        # Records are numbered as the log numbers them (1, 2, ...): every record the log
        # writes is added here, in order, and a failed write takes no number.
        self._added = 0
        self.first_taken = 0  # the number of the first record the last take() returned

    def add(self, end: int, payload: bytes) -> None:
        """A record just written, ending at ``end`` (packed), right after the previous one."""
        self._records.append((end, payload))
        self._added += 1
        self._bytes += len(payload)
        while self._bytes > self._max_bytes:
            self._drop_first()

    def take(self, cursor: int, max_events: int, max_bytes: int) -> tuple[list[bytes], list[int]]:
        """The records right after ``cursor`` and their ends, within the limits as
        ``spool_format.read`` applies them (at least one); empty when the run does not
        begin at ``cursor`` (read the disk then)."""
        self.skip_to(cursor)
        records = self._records
        payloads: list[bytes] = []
        ends: list[int] = []
        if cursor != self._start:
            return payloads, ends
        self.first_taken = self._added - len(records) + 1
        size = 0
        while records and len(payloads) < max_events:
            length = len(records[0][1])
            if payloads and size + length > max_bytes:
                break
            end, payload = self._drop_first()
            payloads.append(payload)
            ends.append(end)
            size += length
        return payloads, ends

    def skip_to(self, cursor: int) -> None:
        """Forget the records that end at or before ``cursor`` (read from disk meanwhile)."""
        records = self._records
        while records and records[0][0] <= cursor:
            self._drop_first()

    def clear(self) -> None:
        """Forget every record. Memory serves again once the disk reads have caught up
        with the records added after this (``skip_to`` finds where the run begins)."""
        self._records.clear()
        self._bytes = 0
        self._start = -1  # no cursor is -1

    def _drop_first(self) -> tuple[int, bytes]:
        first = self._records.popleft()
        self._bytes -= len(first[1])
        self._start = first[0]
        return first
