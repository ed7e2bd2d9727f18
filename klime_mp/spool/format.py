"""The spool's on-disk formats: segment files, record framing, the reader that resyncs,
the ledger. Every file says its version, so a newer klime_mp's files are recognised and left
alone (never read as damage and deleted), and the older format is still read.

Segment, version 2 (this one). A 20-byte file header, then records::

    file header: b"\\xffKSG" | u16 version (2) | u16 flags (0) | u64 first sequence | crc32
    record:      MAGIC (b"\\xffKS2") | crc32 | u32 length | u64 sequence | f64 time | payload

0xFF never occurs in UTF-8, so JSON cannot hold a magic. The sequence numbers a log's
records 1, 2, 3... across its segments, so a damaged region's loss is counted in events
(the gap between the intact records around it), not in regions. The checksum covers
everything after itself (length, sequence, time, payload). All integers little-endian.

Segment, version 1 (klime_mp before sequence numbers): no file header; records are
``b"\\xffKS1" | crc32 of the payload | u32 length | f64 time | payload``. Read as they are
(their acknowledged positions stay valid, so nothing acknowledged is sent again); a damaged
region there counts as one event, the most that can be said without sequence numbers.

A record is intact when its magic, its length (within the data) and its checksum agree.
Anything else is a corrupt region: the reader counts it once and resyncs at the next magic,
so a torn tail (a kill mid-write) or a flipped byte costs that record only.

The ledger (``<log>.ledger``) holds the acknowledged position and the sent mark, rewritten
in place with one ``pwrite``: ``LEDGER_MAGIC (b"KSL2", its version) | segment u64 | offset
u64 | sent segment u64 | sent offset u64 | crc32`` (40 bytes). Everything in segments before
``segment``, and in ``segment`` before ``offset``, is acknowledged. Records between the
acknowledged position and the sent mark were taken for sending and not yet acknowledged: if
the writer died, the server may have them already, and a claimer counts them as resent. A
missing segment (deleted once acknowledged, or by the size limit) is simply skipped.
"""

from __future__ import annotations

import os
import struct
import time
from typing import NamedTuple
from zlib import crc32

from klime_mp.errors import SpoolNewerFormat

VERSION = 2  # of segment files; the ledger's is in its magic
FILE_MAGIC = b"\xffKSG"
_FILE_HEADER = struct.Struct("<4sHHQ")
FILE_HEADER_BYTES = _FILE_HEADER.size + 4  # and its crc32
MAGIC = b"\xffKS2"
HEADER_BYTES = 28
_CRC = struct.Struct("<I")
_CRC_LENGTH = struct.Struct("<II")
_PREFIX = struct.Struct("<4sI")  # magic, crc
_TAIL = struct.Struct("<IQd")  # length, sequence, time: what the crc covers with the payload
_SEQ = struct.Struct("<Q")
MAGIC_V1 = b"\xffKS1"
_TIME_V1 = struct.Struct("<d")
# Any other b"\xffKS?" record magic, or a file header of a higher version, is a newer format.
FAMILY = b"\xffKS"

LEDGER_MAGIC = b"KSL2"
LEDGER_FAMILY = b"KSL"
_LEDGER = struct.Struct("<4sQQQQ")
LEDGER_BYTES = _LEDGER.size + _CRC.size

# Bytes read ahead per pread beyond what a take() asked for, so that a batch of small
# records costs one system call, not one per record.
READ_AHEAD = 64 * 1024


class Layout(NamedTuple):
    """How to read one segment file's records."""

    version: int
    start: int  # where records begin (after the file header)
    magic: bytes
    header: int  # record header bytes
    crc_from: int  # the checksum covers the record from here to its end
    time_at: int  # offset of the append time in a record
    sequenced: bool


V2 = Layout(2, FILE_HEADER_BYTES, MAGIC, HEADER_BYTES, 8, 20, True)
V1 = Layout(1, 0, MAGIC_V1, 20, 20, 12, False)


def file_header(first_seq: int) -> bytes:
    body = _FILE_HEADER.pack(FILE_MAGIC, VERSION, 0, first_seq)
    return body + _CRC.pack(crc32(body))


def classify(head: bytes, path: str) -> tuple[Layout, int | None]:
    """A segment's layout and first sequence number (None: unknown) from its first bytes
    (read ``READ_AHEAD`` of them); SpoolNewerFormat for a newer klime_mp's file."""
    if head.startswith(FILE_MAGIC) and len(head) >= FILE_HEADER_BYTES:
        body = head[: _FILE_HEADER.size]
        if _CRC.unpack_from(head, _FILE_HEADER.size)[0] == crc32(body):
            _, version, _, first_seq = _FILE_HEADER.unpack(body)
            if version > VERSION:
                raise SpoolNewerFormat(path, f"version {version}")
            if version == VERSION:
                return V2, first_seq
    elif head.startswith(FAMILY) and head[3:4] not in (b"G", MAGIC[3:], MAGIC_V1[3:]):
        raise SpoolNewerFormat(path, f"with records marked {head[:4]!r}")
    # A damaged beginning (or an empty file): whichever record magic shows up first.
    v1, v2 = head.find(MAGIC_V1), head.find(MAGIC)
    if v1 >= 0 and (v2 < 0 or v1 < v2):
        return V1, None
    return V2, None


def ledger_is_newer(raw: bytes) -> bool:
    """A ledger of a newer klime_mp (``KSL3``...), as opposed to a damaged one."""
    digit = raw[3:4]
    return raw.startswith(LEDGER_FAMILY) and digit.isdigit() and digit > LEDGER_MAGIC[3:]


def frame(data: bytes, seq: int) -> bytes:
    """Record number ``seq`` of its log, ready for a single ``os.write``."""
    tail = _TAIL.pack(len(data), seq, time.time())
    return _PREFIX.pack(MAGIC, crc32(data, crc32(tail))) + tail + data


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


def record_time(fd: int, offset: int, layout: Layout) -> float | None:
    """The append time of the record at ``offset``, or None if there is none intact."""
    head = os.pread(fd, layout.header, offset)
    if len(head) < layout.header or not head.startswith(layout.magic):
        return None
    stamp: float = _TIME_V1.unpack_from(head, layout.time_at)[0]
    return stamp


class Batch:
    """Records read by ``read``: the payloads, their end offsets and sequence numbers
    (sequenced layouts only), and corrupt regions met (``tail``: the last thing read was
    one, with no intact record after it)."""

    __slots__ = ("corrupt", "ends", "payloads", "seqs", "size", "tail")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.ends: list[int] = []
        self.seqs: list[int] = []
        self.corrupt = 0
        self.size = 0
        self.tail = False


def gaps(seqs: list[int], before: int, floor: int) -> int:
    """Sequence numbers missing from ``seqs`` (ascending), counting from ``before`` (the
    number of the record before them), and only above ``floor`` (counted already)."""
    lost = 0
    for seq in seqs:
        low = before if before > floor else floor
        if seq > low + 1:
            lost += seq - low - 1
        before = seq
    return lost


def read(
    fd: int,
    pos: int,
    end: int,
    max_events: int,
    max_bytes: int,
    batch: Batch,
    layout: Layout = V2,
) -> int:
    """Append to ``batch`` the records of ``fd`` from ``pos`` up to ``end``, within the limits
    (counting what ``batch`` already holds; at least one record when it holds none).
    Returns the offset after the last record (or corrupt region) consumed.

    A corrupt region (no magic, a length past the data, a wrong checksum) is counted once
    in ``batch.corrupt`` and skipped up to the next magic.
    """
    payloads, ends, seqs = batch.payloads, batch.ends, batch.seqs
    magic, header, crc_from, sequenced = (
        layout.magic,
        layout.header,
        layout.crc_from,
        layout[6],
    )  # sequenced
    pos = max(pos, layout.start)
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
            if n - at >= header and buf.startswith(magic, at):
                crc, length = _CRC_LENGTH.unpack_from(buf, at + 4)
                stop = at + header + length
                if stop <= n and crc32(view[at + crc_from : stop]) == crc:
                    if payloads and (
                        len(payloads) >= max_events or batch.size + length > max_bytes
                    ):
                        return pos + at
                    payloads.append(buf[at + header : stop])
                    ends.append(pos + stop)
                    if sequenced:
                        seqs.append(_SEQ.unpack_from(buf, at + 12)[0])
                    batch.size += length
                    in_corrupt = batch.tail = False
                    at = stop
                    continue
                if n < stop <= available:
                    want = stop - at  # intact so far, longer than this read: read it whole
                    break
            elif n - at < header and not final:
                break  # a header cut by the end of this read: read on from here
            if not in_corrupt:
                batch.corrupt += 1
                in_corrupt = batch.tail = True
            found = buf.find(magic, at + 1)
            if found < 0:  # the next magic may straddle the end of this read
                at = n if final else max(at + 1, n - len(magic) + 1)
                break
            at = found
        pos += at
    return pos
