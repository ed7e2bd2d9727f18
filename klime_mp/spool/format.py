"""The spool's on-disk formats: record framing, the reader that resyncs, the ledger.

A record is ``MAGIC | crc32 | length | time | payload``::

    offset 0   4 bytes  MAGIC (b"\\xffKS1": 0xFF never occurs in UTF-8, so JSON cannot hold it)
    offset 4   u32      crc32 of the payload
    offset 8   u32      payload length
    offset 12  f64      time.time() at append (for the oldest-pending age in ``status``)
    offset 20           payload

All integers little-endian. A record is intact when its magic, its length (within the data)
and its checksum agree (a damaged length makes the checksum cover the wrong bytes; a damaged
time only misleads ``status``, so one checksum over the payload is enough). Anything else
is a corrupt region: the reader counts it once and resyncs at the next magic, so a torn tail
(a kill mid-write) or a flipped byte costs that record only, never the records after it.

The ledger (``<log>.ledger``) holds the acknowledged position and the sent mark, rewritten
in place with one ``pwrite``: ``LEDGER_MAGIC | segment u64 | offset u64 | sent segment u64 |
sent offset u64 | crc32`` (40 bytes). Everything in segments before ``segment``, and in
``segment`` before ``offset``, is acknowledged. Records between the acknowledged position and
the sent mark were taken for sending and not yet acknowledged: if the writer died, the server
may have them already, and a claimer counts them as resent. A missing segment (deleted once
acknowledged, or by the size limit) is simply skipped.
"""

from __future__ import annotations

import os
import struct
import time
from typing import NamedTuple
from zlib import crc32

MAGIC = b"\xffKS1"
HEADER_BYTES = 20
_CRC = struct.Struct("<I")
_CRC_LENGTH = struct.Struct("<II")
_TAIL = struct.Struct("<Id")  # length, time
_HEADER = struct.Struct("<4sIId")  # the whole header in one pack: ~0.1 µs less per event

LEDGER_MAGIC = b"KSL2"
_LEDGER = struct.Struct("<4sQQQQ")
LEDGER_BYTES = _LEDGER.size + _CRC.size

# Bytes read ahead per pread beyond what a take() asked for, so that a batch of small
# records costs one system call, not one per record.
READ_AHEAD = 64 * 1024


def frame(data: bytes) -> bytes:
    """One record, ready for a single ``os.write``."""
    return _HEADER.pack(MAGIC, crc32(data), len(data), time.time()) + data


class Position(NamedTuple):
    segment: int
    offset: int


START = Position(0, 0)


def pack_ledger(position: Position, sent: Position | None = None) -> bytes:
    mark = position if sent is None or sent < position else sent
    body = _LEDGER.pack(LEDGER_MAGIC, *position, *mark)
    return body + _CRC.pack(crc32(body))


def unpack_ledger(raw: bytes) -> Position | None:
    """The acknowledged position, or None when the ledger is not ours or damaged."""
    both = unpack_ledger_marks(raw)
    return None if both is None else both[0]


def unpack_ledger_marks(raw: bytes) -> tuple[Position, Position] | None:
    """The acknowledged position and the sent mark, or None (not ours, or damaged)."""
    if len(raw) != LEDGER_BYTES:
        return None
    body = raw[: _LEDGER.size]
    if _CRC.unpack_from(raw, _LEDGER.size)[0] != crc32(body):
        return None
    magic, segment, offset, sent_segment, sent_offset = _LEDGER.unpack(body)
    if magic != LEDGER_MAGIC:
        return None
    return Position(segment, offset), Position(sent_segment, sent_offset)


def record_time(fd: int, offset: int) -> float | None:
    """The append time of the record at ``offset``, or None if there is none intact."""
    head = os.pread(fd, HEADER_BYTES, offset)
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        return None
    stamp: float = _TAIL.unpack_from(head, 8)[1]
    return stamp


class Batch:
    """Records read by ``read``: the payloads, their end offsets, and corrupt regions met."""

    __slots__ = ("corrupt", "ends", "payloads", "size")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.ends: list[int] = []
        self.corrupt = 0
        self.size = 0


def read(fd: int, pos: int, end: int, max_events: int, max_bytes: int, batch: Batch) -> int:
    """Append to ``batch`` the records of ``fd`` from ``pos`` up to ``end``, within the limits
    (counting what ``batch`` already holds; at least one record when it holds none).
    Returns the offset after the last record (or corrupt region) consumed.

    A corrupt region (no magic, a length past the data, a wrong checksum) is counted once
    in ``batch.corrupt`` and skipped up to the next magic.
    """
    payloads, ends = batch.payloads, batch.ends
    in_corrupt = False
    want = 0  # bytes the record at ``pos`` needs, when it is longer than a read-ahead
    while pos < end and len(payloads) < max_events:
        size = min(end - pos, max(want, READ_AHEAD))
        buf = os.pread(fd, size, pos)
        if not buf:  # the file ends before ``end`` (truncated by the size limit)
            return end
        n = len(buf)
        available = end - pos if n == size else n  # a short read: that is all there is
        final = n >= available
        view = memoryview(buf)
        at = want = 0
        while at < n:
            if n - at >= HEADER_BYTES and buf.startswith(MAGIC, at):
                crc, length = _CRC_LENGTH.unpack_from(buf, at + 4)
                stop = at + HEADER_BYTES + length
                if stop <= n and crc32(view[at + HEADER_BYTES : stop]) == crc:
                    if payloads and (
                        len(payloads) >= max_events or batch.size + length > max_bytes
                    ):
                        return pos + at
                    payloads.append(buf[at + HEADER_BYTES : stop])
                    ends.append(pos + stop)
                    batch.size += length
                    in_corrupt = False
                    at = stop
                    continue
                if n < stop <= available:
                    want = stop - at  # intact so far, longer than this read: read it whole
                    break
            elif n - at < HEADER_BYTES and not final:
                break  # a header cut by the end of this read: read on from here
            if not in_corrupt:
                batch.corrupt += 1
                in_corrupt = True
            found = buf.find(MAGIC, at + 1)
            if found < 0:  # the next magic may straddle the end of this read
                at = n if final else max(at + 1, n - len(MAGIC) + 1)
                break
            at = found
        pos += at
    return pos
