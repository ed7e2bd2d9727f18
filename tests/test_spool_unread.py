"""The spool's read cache: a sender keeping up takes the newest records from memory, and
whatever path a read takes (memory, disk, a rewind, a segment roll, a run longer than the
cache), every record is taken once, in the order it was appended."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from klime_mp.spool import log as spool
from klime_mp.spool import unread as spool_unread


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return spool.app_directory(tmp_path / "spool", "http://127.0.0.1:9", "wk_test")


def open_log(app: Path) -> spool.EventLog:
    return spool.EventLog.open(app, max_bytes=1 << 30, on_loss=lambda reason, records: None)


def record(index: int) -> bytes:
    return b'{"n":%d,"pad":"%s"}' % (index, b"x" * (index % 37))


def wipe_segments(app: Path) -> None:
    """Overwrite every segment's bytes on disk: a read from disk finds no record."""
    for path in app.glob("*.seg"):
        size = path.stat().st_size
        with open(path, "r+b") as file:
            file.write(b"\0" * size)


def test_a_sender_keeping_up_takes_the_newest_records_from_memory(app: Path) -> None:
    log = open_log(app)
    for index in range(5):
        log.append(record(index))
    wipe_segments(app)  # from here on, only memory still has the records
    assert log.take(3, 1 << 20) == [record(0), record(1), record(2)]
    assert log.take(10, 1 << 20) == [record(3), record(4)]
    log.acknowledge(5)
    assert log.pending() == 0
    log.close()


def test_after_a_rewind_the_records_come_again_from_disk(app: Path) -> None:
    log = open_log(app)
    for index in range(6):
        log.append(record(index))
    assert log.take(4, 1 << 20) == [record(index) for index in range(4)]
    log.rewind()  # the send failed: the same records again, then the rest
    wipe_segments(app)  # so the disk, not memory, must serve them: it cannot
    assert log.take(10, 1 << 20) == []
    assert log.torn == 6  # the six wiped records, in events
    log.rewind()
    assert log.take(10, 1 << 20) == []
    assert log.torn == 6  # counted once
    log.close()


def test_a_rewind_then_reading_on_takes_every_record_once(app: Path) -> None:
    log = open_log(app)
    for index in range(6):
        log.append(record(index))
    first = log.take(4, 1 << 20)
    log.rewind()
    again = log.take(2, 1 << 20)  # from disk: the cache is ahead of the cursor
    log.append(record(6))
    rest = log.take(10, 1 << 20)
    assert first == [record(index) for index in range(4)]
    assert again + rest == [record(index) for index in range(7)]
    log.close()


def test_once_the_disk_reads_catch_up_memory_serves_again(app: Path) -> None:
    log = open_log(app)
    for index in range(6):
        log.append(record(index))
    log.take(4, 1 << 20)
    log.rewind()
    assert log.take(6, 1 << 20) == [record(index) for index in range(6)]  # from disk
    log.append(record(6))
    wipe_segments(app)
    assert log.take(10, 1 << 20) == [record(6)]  # from memory: the disk has nothing left
    log.close()


def test_after_the_size_limit_dropped_records_memory_serves_the_new_ones(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 1024)
    monkeypatch.setattr(spool, "CHECK_EVERY_BYTES", 1024)
    lost: list[bytes] = []
    log = spool.EventLog.open(
        app, max_bytes=4 * 1024, on_loss=lambda reason, records: lost.extend(records)
    )
    appended = [record(index) for index in range(200)]
    for data in appended:
        log.append(data)
    assert lost  # the oldest segments went, and the cache with them
    taken: list[bytes] = []
    while records := log.take(50, 1 << 20):  # the rest, from disk
        taken.extend(records)
        log.acknowledge(len(records))
    assert lost + taken == appended  # each record either lost or taken, once, in order
    log.append(b"new")
    wipe_segments(app)
    assert log.take(10, 1 << 20) == [b"new"]  # a new run in memory
    log.close()


def test_memory_keeps_only_the_newest_records_up_to_its_byte_limit() -> None:
    unread = spool_unread.Unread(origin=0, max_bytes=300)
    for end in range(100, 1100, 100):  # ten records of 100 bytes, ending at 100 ... 1000
        unread.add(end, b"%04d" % end + b"." * 96)
    assert unread.take(0, 10, 1 << 20) == ([], [])  # the first seven are gone: read the disk
    payloads, ends = unread.take(700, 10, 1 << 20)  # where the disk reads got to
    assert ends == [800, 900, 1000]
    assert [payload[:4] for payload in payloads] == [b"0800", b"0900", b"1000"]


def test_the_byte_limit_of_a_take_from_memory(app: Path) -> None:
    log = open_log(app)
    for _ in range(4):
        log.append(b"a" * 100)
    wipe_segments(app)  # every answer below comes from memory
    assert len(log.take(10, 250)) == 2  # 100 + 100 fit in 250, a third would not
    assert len(log.take(10, 50)) == 1  # at least one, even over the limit
    assert len(log.take(10, 1 << 20)) == 1
    log.close()


@pytest.mark.parametrize("seed", range(8))
def test_every_record_is_taken_once_in_order_whatever_the_interleaving(
    app: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # Tiny segments (rolls every few records) and a tiny cache (most takes find the run
    # cut short or ahead of the cursor), driven by a seeded random schedule of appends,
    # takes, acknowledgements and rewinds, checked against the simplest model: the
    # acknowledged records are the appended ones, in order, each once.
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 512)
    monkeypatch.setattr(spool, "Unread", lambda origin: spool_unread.Unread(origin, max_bytes=300))
    rng = random.Random(seed)
    log = open_log(app)
    appended: list[bytes] = []
    acknowledged: list[bytes] = []
    in_flight: list[bytes] = []
    for _ in range(3000):
        action = rng.random()
        if action < 0.5:
            appended.append(record(len(appended)))
            log.append(appended[-1])
        elif action < 0.8:
            taken = log.take(rng.randint(1, 8), rng.choice([1 << 20, 120]))
            expected_start = len(acknowledged) + len(in_flight)
            assert taken == appended[expected_start : expected_start + len(taken)]
            in_flight.extend(taken)
        elif action < 0.95:
            count = rng.randint(0, len(in_flight))
            log.acknowledge(count)
            acknowledged.extend(in_flight[:count])
            del in_flight[:count]
        else:
            log.rewind()
            in_flight.clear()
    log.acknowledge(len(in_flight))
    acknowledged.extend(in_flight)
    while records := log.take(8, 1 << 20):
        log.acknowledge(len(records))
        acknowledged.extend(records)
    assert acknowledged == appended
    assert log.pending() == 0 and log.torn == 0
    log.close()
    assert not os.listdir(app)  # everything acknowledged: the files are gone
