"""The sequence numbers of this process's own log: how many records a damaged region cost,
in events.

Records are numbered 1, 2, 3... as they are written (a failed write takes no number). The
sender takes them in that order, from memory or from disk; a read from disk that skips a
damaged region finds a gap in the numbers, and the gap is the loss. Each number is counted
once: ``floor`` is the highest number already taken from disk or counted as lost, so a read
again after a rewind counts nothing twice, while a region first served from memory and then
found damaged on disk after a rewind is counted (its numbers are above ``floor``).
"""

from __future__ import annotations

from collections import deque

from klime_mp.spool.format import Batch, gaps


class Numbering:
    """Not thread-safe: the log calls it under its own lock."""

    def __init__(self) -> None:
        self.written = 0  # the number of the last record written
        self._cursor = 0  # the number of the last record taken (the reader is after it)
        self._acked = 0
        self._flight: deque[int] = deque()  # numbers of the records taken, not acknowledged
        self._floor = 0

    def taken(self, first: int, count: int) -> None:
        """``count`` records numbered from ``first`` were taken (from memory)."""
        if count:
            self._flight.extend(range(first, first + count))
            self._cursor = first + count - 1

    def taken_from_disk(self, seqs: list[int]) -> None:
        if seqs:
            self._flight.extend(seqs)
            self._cursor = seqs[-1]

    def acknowledged(self, count: int) -> None:
        for _ in range(count - 1):
            self._flight.popleft()
        if count:
            self._acked = self._flight.popleft()

    def rewound(self) -> None:
        self._cursor = self._acked
        self._flight.clear()

    def dropped(self, seqs: list[int]) -> None:
        """Records deleted by the size limit: counted there, never as damage."""
        if seqs and seqs[-1] > self._floor:
            self._floor = seqs[-1]

    def lost(self, batch: Batch, appended: int | None) -> int:
        """Events lost in the damaged regions of a read from disk that starts at the
        reader's cursor (``appended``: it reached the end of what was written, whose last
        record was that number when the read began; see ``Log.take``)."""
        lost = gaps(batch.seqs, self._cursor, self._floor)
        top = max(batch.seqs[-1] if batch.seqs else self._cursor, self._floor)
        if appended is not None and appended > top:  # a damaged tail: nothing intact after
            lost += appended - top
            top = appended
        self._floor = top
        return lost
