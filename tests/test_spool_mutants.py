"""The spool's decisions that its mutation runs found untested (docs/testing.md).

Each test pins one decision of ``klime_mp/spool/`` that a surviving mutant (mutmut or
cosmic-ray) changed without any test noticing: how much the size limit deletes and what it
reports, when a file left by a crash is a leftover (60 s), how losses in damaged records are
counted in events (this process's log and a dead writer's), when segments roll, how a log's
files are created and cleaned up on a full disk, and what ``spool status`` shows. Real files
in the test's own directory; a real tmpfs (256 KiB) for full and read-only disks.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from klime_mp.spool import format as fmt
from klime_mp.spool import limit
from klime_mp.spool import log as spool
from klime_mp.spool.unread import Unread
from tests.test_spool_edges import mount_tmpfs

SEGMENT = 8 * 1024  # SEGMENT_BYTES in these tests: a segment rolls past 8 KiB
HEADER = 28  # bytes before each payload on disk (magic, crc, length, number, time)


def record(index: int) -> bytes:
    return b"rec-%08d" % index + b"x" * 88  # 100 bytes


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", SEGMENT)
    return spool.app_directory(tmp_path / "spool", "http://127.0.0.1:9", "wk_test")


def open_log(app: Path, max_bytes: int = 1 << 30) -> spool.EventLog:
    def on_loss(reason: str, records: list[bytes]) -> None:
        raise AssertionError(f"nothing is dropped by the log itself here: {reason}")

    return spool.EventLog.open(app, max_bytes=max_bytes, on_loss=on_loss)


def leave_orphan(app: Path, first: int, count: int) -> str:
    """A log whose writer closed without acknowledging; its name."""
    log = open_log(app)
    for index in range(first, first + count):
        log.append(record(index))
    name = log.log_id
    log.close()
    return name


def segments_of(app: Path, log_id: str) -> list[Path]:
    return sorted(app.glob(f"{log_id}-*.seg"))


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# -- the size limit deletes the least it can -----------------------------------------------


def test_size_limit_deletes_the_oldest_segments_until_the_rest_fits_and_no_more(
    app: Path,
) -> None:
    # Four full segments of a dead process's log (64 records of 100 bytes each, 8,212
    # bytes with their headers), the oldest first.
    orphan = leave_orphan(app, 0, 256)
    files = segments_of(app, orphan)
    assert len(files) == 4
    for n, path in enumerate(files):
        age(path, 100 - n)  # strictly ordered by age, whatever the clock's granularity
    live = open_log(app)
    live.append(record(1000))
    sizes = [path.stat().st_size for path in files]
    on_disk = sum(path.stat().st_size for path in app.glob("*.seg"))
    # Room for everything but the two oldest segments, to the byte.
    room = on_disk - sizes[0] - sizes[1]
    lost = limit.enforce(live, room)
    assert lost == [[record(i) for i in range(64)], [record(i) for i in range(64, 128)]]
    assert segments_of(app, orphan) == files[2:]
    # Within the limit already: nothing more goes.
    assert limit.enforce(live, room) == []
    assert segments_of(app, orphan) == files[2:]
    live.close()


def test_size_limit_reports_only_the_unacknowledged_records_of_an_orphans_segment(
    app: Path,
) -> None:
    # The writer had 10 records of its first segment acknowledged, then died: deleting that
    # segment loses records 11 to 64, not the 10 delivered.
    log = open_log(app)
    for index in range(1, 101):  # 64 records, then 36
        log.append(record(index))
    assert len(log.take(10, 1 << 20)) == 10
    log.acknowledge(10)
    name = log.log_id
    log.close()
    first, second = segments_of(app, name)
    age(first, 100)
    age(second, 99)
    live = open_log(app)
    on_disk = sum(path.stat().st_size for path in app.glob("*.seg"))
    lost = limit.enforce(live, on_disk - first.stat().st_size)
    assert lost == [[record(i) for i in range(11, 65)]]
    live.close()


def test_size_limit_deletes_a_dead_claimers_leftovers_before_any_event(app: Path) -> None:
    # A claimer deletes the ledger first, then the segments; one that died in between
    # leaves segments nobody owns, all of them delivered. The size limit deletes them first
    # and reports nothing lost; a segment without a ledger younger than 60 s may be the
    # first of a log being created right now: it stays, and the next oldest goes instead.
    leftover = leave_orphan(app, 0, 128)  # two full segments
    young = leave_orphan(app, 500, 1)
    for name in (leftover, young):
        (app / f"{name}.ledger").unlink()
    for n, path in enumerate(segments_of(app, leftover)):
        age(path, 200 - n)
    age(segments_of(app, young)[0], 50)
    orphan = leave_orphan(app, 1000, 100)  # 64 records, then 36
    for n, path in enumerate(segments_of(app, orphan)):
        age(path, 40 - n)
    live = open_log(app)
    on_disk = sum(path.stat().st_size for path in app.glob("*.seg"))
    leftover_bytes = sum(path.stat().st_size for path in segments_of(app, leftover))
    first = segments_of(app, orphan)[0].stat().st_size
    lost = limit.enforce(live, on_disk - leftover_bytes - first)
    assert lost == [[], [], [record(i) for i in range(1000, 1064)]]
    assert segments_of(app, leftover) == []
    assert len(segments_of(app, young)) == 1
    live.close()
    claimed = spool.claim_orphan(app)
    assert claimed is not None and claimed.pending() == 36
    claimed.release()


# -- files left by a crash: leftovers after 60 s, not before ---------------------------------


def test_a_file_left_by_a_crash_is_a_leftover_after_60_s_and_not_before(app: Path) -> None:
    older, newer = leave_orphan(app, 0, 1), leave_orphan(app, 1, 1)
    for name in (older, newer):
        (app / f"{name}.ledger").unlink()
    old_temp, young_temp = app / ".123-0000abcd.ledger.tmp", app / ".124-0000abcd.ledger.tmp"
    old_temp.write_bytes(b"")
    young_temp.write_bytes(b"")
    # Half a second either side of 60 s (a loaded machine has that long to get to the claim).
    age(segments_of(app, older)[0], 60.5)
    age(old_temp, 60.5)
    age(segments_of(app, newer)[0], 59.5)
    age(young_temp, 59.5)
    assert spool.claim_orphan(app) is None
    assert segments_of(app, older) == [] and not old_temp.exists()
    assert len(segments_of(app, newer)) == 1 and young_temp.exists()


# -- the endpoint note on a full disk ------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "disk", "256k")


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_disk_leaves_neither_an_endpoint_note_nor_its_temporary_file(disk: Path) -> None:
    app = spool.app_directory(disk / "spool", "http://127.0.0.1:9", "wk_test")
    live = open_log(app)
    fill(disk / "filler")
    spool.remember_endpoint(app, "http://127.0.0.1:9")  # best effort: no error
    assert sorted(p.name for p in app.parent.iterdir()) == [app.name]
    (disk / "filler").unlink()
    spool.remember_endpoint(app, "http://127.0.0.1:9")
    assert (app.parent / f"{app.name}.endpoint").read_text() == "http://127.0.0.1:9"
    live.close()


def test_a_read_only_disk_makes_the_endpoint_note_a_no_op(disk: Path) -> None:
    # Nothing can be created there: the note is skipped, without an error.
    app = spool.app_directory(disk / "spool", "http://127.0.0.1:9", "wk_test")
    open_log(app).close()  # the app directory, empty
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    spool.remember_endpoint(app, "http://127.0.0.1:9")
    assert sorted(p.name for p in app.parent.iterdir()) == [app.name]


# -- this process's own log: damage it reads from disk, counted in events -------------------


def zero_records(segment: Path, first: int, count: int, size: int) -> None:
    """Zero records ``first`` to ``first + count - 1`` (numbered from 1) of ``size`` bytes."""
    with open(segment, "r+b") as file:
        file.seek(fmt.FILE_HEADER_BYTES + (first - 1) * (HEADER + size))
        file.write(b"\0" * count * (HEADER + size))


def test_own_log_counts_damage_it_reads_again_after_a_rewind(app: Path) -> None:
    log = open_log(app)
    for index in range(1, 13):
        log.append(record(index))
    assert log.take(100, 1 << 20) == [record(i) for i in range(1, 13)]  # from memory
    log.acknowledge(5)
    (segment,) = segments_of(app, log.log_id)
    zero_records(segment, 6, 1, 100)  # one in the middle
    zero_records(segment, 11, 2, 100)  # and the last two: a damaged tail
    log.rewind()  # the send failed: the rest comes again, from disk
    assert log.take(100, 1 << 20) == [record(i) for i in range(7, 11)]
    assert log.torn == 3  # record 6, and 11 and 12 (the log knows it wrote 12)
    log.close()


def test_own_log_counts_a_damaged_first_record_of_a_backlog_read_from_disk(app: Path) -> None:
    # Over 1 MiB waiting: the oldest records are no longer kept in memory, so the first
    # take reads the disk, from the first record on.
    log = open_log(app)
    big = [b"big-%06d" % i + b"y" * 990 for i in range(1, 1101)]  # 1,000 bytes each
    for data in big:
        log.append(data)
    zero_records(segments_of(app, log.log_id)[0], 1, 1, 1000)
    assert log.take(10, 1 << 20) == big[1:11]
    assert log.torn == 1
    log.close()


def test_own_log_counts_a_damaged_record_read_from_disk_after_takes_from_memory(
    app: Path,
) -> None:
    # The sender took three records from memory; then over 1 MiB arrived at once, so the
    # next take reads the disk, from record 4 on.
    log = open_log(app)
    for index in range(1, 4):
        log.append(record(index))
    assert log.take(100, 1 << 20) == [record(1), record(2), record(3)]
    log.acknowledge(3)
    big = [b"big-%06d" % i + b"y" * 990 for i in range(4, 1104)]  # 1,000 bytes each
    for data in big:
        log.append(data)
    with open(segments_of(app, log.log_id)[0], "r+b") as file:  # record 4, the first big one
        file.seek(fmt.FILE_HEADER_BYTES + 3 * (HEADER + 100))
        file.write(b"\0" * (HEADER + 1000))
    assert log.take(10, 1 << 20) == big[1:11]
    assert log.torn == 1
    log.close()


# -- a dead writer's log: what it held, counted exactly ------------------------------------


def test_an_orphan_acknowledged_part_way_counts_no_damage_and_resends_exactly(app: Path) -> None:
    # The writer took 30 records for sending, had 10 acknowledged, then died. The claimer
    # reads from record 11: nothing damaged, 20 possibly resent; a rewind of records taken
    # again does not count them twice, not even the last one of the batch.
    log = open_log(app)
    for index in range(1, 41):
        log.append(record(index))
    assert len(log.take(30, 1 << 20)) == 30
    log.acknowledge(10)
    log.close()
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert (orphan.pending(), orphan.torn) == (30, 0)
    assert orphan.take(15, 1 << 20) == [record(i) for i in range(11, 26)]
    assert orphan.resent == 15
    orphan.rewind()
    assert orphan.take(15, 1 << 20) == [record(i) for i in range(11, 26)]
    assert orphan.resent == 15
    orphan.acknowledge(15)
    assert orphan.pending() == 15
    assert len(orphan.take(100, 1 << 20)) == 15
    assert orphan.resent == 20
    orphan.acknowledge(15)
    assert orphan.pending() == 0
    orphan.release()


def test_an_orphan_counts_a_lost_segment_tail_and_the_next_segments_damaged_head(
    app: Path,
) -> None:
    # Two segments of 64 records and 36: the last two records of the first are damaged,
    # and the first record of the second. The second's file header says its first record
    # is number 65: 2 lost before it, 1 after.
    name = leave_orphan(app, 1, 100)
    first, second = segments_of(app, name)
    zero_records(first, 63, 2, 100)
    zero_records(second, 1, 1, 100)
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert (orphan.pending(), orphan.torn) == (97, 3)
    orphan.release()


def test_status_ages_an_orphan_by_its_oldest_pending_record(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    stamps = iter([now - 100.0] + [now] * 9)  # the first record was appended 100 s ago
    monkeypatch.setattr(
        fmt, "time", type("Clock", (), {"time": staticmethod(lambda: next(stamps))})
    )
    leave_orphan(app, 1, 10)
    (found,) = spool.status(app.parent)
    assert found.orphans == 1 and found.pending == 10
    assert found.oldest_pending_age is not None
    assert 100.0 <= found.oldest_pending_age < 130.0


# -- a short write on a full disk --------------------------------------------------------


def test_a_record_after_a_short_write_follows_the_last_whole_one(disk: Path) -> None:
    # The disk fills in the middle of a record: the partial record is cut off, and once
    # there is room again the next record goes right after the last whole one (O_APPEND),
    # not after the cut-off bytes, where a reader would find a hole of zeros.
    app = spool.app_directory(disk / "spool", "http://127.0.0.1:9", "wk_test")
    log = open_log(app)
    log.append(record(1))
    fill(disk / "filler")
    os.truncate(disk / "filler", (disk / "filler").stat().st_size - 8192)  # two pages free
    with pytest.raises(OSError) as refused:
        log.append(b"z" * 20_000)
    assert refused.value.errno == errno.ENOSPC
    (disk / "filler").unlink()
    log.append(record(2))
    name = log.log_id
    log.close()
    (segment,) = segments_of(app, name)
    assert segment.stat().st_size == fmt.FILE_HEADER_BYTES + 2 * (HEADER + 100)
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert orphan.take(10, 1 << 20) == [record(1), record(2)]
    assert orphan.torn == 0
    orphan.acknowledge(2)
    orphan.release()


# -- creating a log's files ------------------------------------------------------------------


def test_a_new_ledger_is_made_in_the_app_directory_whatever_the_working_directory(
    disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made under a temporary name and renamed into place: in the app directory itself (a
    # rename cannot cross filesystems, and a crash leaves the temporary where a successor
    # cleans it up), not in the working directory, here another filesystem.
    monkeypatch.chdir(disk)
    app = spool.app_directory(tmp_path / "spool", "http://127.0.0.1:9", "wk_test")
    log = open_log(app)
    log.append(record(1))
    assert sorted(p.suffix for p in app.iterdir()) == [".ledger", ".seg"]
    assert list(disk.iterdir()) == []
    log.close()


def test_a_log_name_in_use_by_a_ledger_being_created_is_never_taken_over(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process is between creating its ledger and renaming it: that name is taken.
    open_log(app).close()  # the app directory
    monkeypatch.setattr(spool.secrets, "token_hex", lambda n: "0000abcd")
    taken = app / f".{os.getpid()}-0000abcd.ledger.tmp"
    taken.write_bytes(b"theirs")
    with pytest.raises(spool.SpoolUnavailable, match="cannot create a unique log name"):
        open_log(app)
    assert taken.read_bytes() == b"theirs"
    assert list(app.glob("*.ledger")) == []


def test_a_segment_that_cannot_be_started_on_a_full_disk_is_removed(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The segment being written is full and the disk too: the next one cannot even hold its
    # header. The append fails with ENOSPC (the caller falls back to memory) and leaves no
    # empty segment behind; once there is room, the log goes on.
    monkeypatch.setattr(spool, "SEGMENT_BYTES", SEGMENT)
    app = spool.app_directory(disk / "spool", "http://127.0.0.1:9", "wk_test")
    log = open_log(app)
    for index in range(1, 65):  # 64 records of 100 bytes: the first segment is full
        log.append(record(index))
    fill(disk / "filler")
    with pytest.raises(OSError) as refused:
        log.append(record(65))
    assert refused.value.errno == errno.ENOSPC
    assert len(segments_of(app, log.log_id)) == 1
    (disk / "filler").unlink()
    log.append(record(65))
    assert len(segments_of(app, log.log_id)) == 2
    assert len(log.take(100, 1 << 20)) == 65
    log.close()


def test_a_log_that_cannot_be_created_on_a_full_disk_is_unavailable_and_leaves_nothing(
    disk: Path,
) -> None:
    # The ledger's first write fails: SpoolUnavailable (the client then keeps events in
    # memory and says so), and its temporary file is gone.
    app = spool.app_directory(disk / "spool", "http://127.0.0.1:9", "wk_test")
    open_log(app).close()  # the app directory, empty
    fill(disk / "filler")
    with pytest.raises(spool.SpoolUnavailable, match="No space left"):
        open_log(app)
    assert list(app.iterdir()) == []


# -- segments: when they roll, which ones the size limit may take --------------------------


def test_a_segment_rolls_once_it_holds_4_mib(tmp_path: Path) -> None:
    app = spool.app_directory(tmp_path / "spool", "http://127.0.0.1:9", "wk_test")
    log = open_log(app)
    data = b"k" * (1024 - HEADER)  # 1 KiB a record on disk
    for _ in range(4096):  # 4 MiB and the file header: the segment is full
        log.append(data)
    assert len(segments_of(app, log.log_id)) == 1
    log.append(data)
    first, second = segments_of(app, log.log_id)
    assert first.stat().st_size == fmt.FILE_HEADER_BYTES + 4096 * 1024
    assert second.stat().st_size == fmt.FILE_HEADER_BYTES + 1024
    log.close()


def test_a_delivered_segment_being_written_is_rolled_from_64_kib_not_before(
    tmp_path: Path,
) -> None:
    # 100-byte records take 128 bytes on disk: 508 of them and the file header are just
    # under 64 KiB, 512 just over.
    app = spool.app_directory(tmp_path / "spool", "http://127.0.0.1:9", "wk_test")
    log = open_log(app)
    for index in range(508):
        log.append(record(index))
    (first,) = segments_of(app, log.log_id)
    assert first.stat().st_size == fmt.FILE_HEADER_BYTES + 508 * 128 < 64 * 1024
    assert len(log.take(1000, 1 << 20)) == 508
    log.acknowledge(508)
    assert segments_of(app, log.log_id) == [first]  # delivered, but under 64 KiB: kept
    for index in range(508, 512):
        log.append(record(index))
    assert first.stat().st_size == fmt.FILE_HEADER_BYTES + 512 * 128 >= 64 * 1024
    assert len(log.take(1000, 1 << 20)) == 4
    log.acknowledge(4)
    (second,) = segments_of(app, log.log_id)  # the delivered 64 KiB left the disk
    assert second != first and second.stat().st_size == fmt.FILE_HEADER_BYTES
    log.close()


def test_size_limit_never_takes_any_segment_of_a_batch_in_flight(app: Path) -> None:
    # Records 1 to 100 are being sent: the whole of segment 1 (1-64) and part of segment 2
    # (65-100). Neither may go; segment 3 (129-192) may; segment 4 is being written.
    log = open_log(app)
    for index in range(1, 201):
        log.append(record(index))
    assert len(segments_of(app, log.log_id)) == 4
    assert log.take(100, 1 << 20) == [record(i) for i in range(1, 101)]
    on_disk = sum(path.stat().st_size for path in segments_of(app, log.log_id))
    lost = limit.enforce(log, on_disk - 1)
    assert lost == [[record(i) for i in range(129, 193)]]
    log.acknowledge(100)
    assert log.take(1000, 1 << 20) == [record(i) for i in [*range(101, 129), *range(193, 201)]]
    log.close()


def test_size_limit_keeps_a_segment_whose_last_record_alone_is_in_flight(app: Path) -> None:
    log = open_log(app)
    for index in range(1, 201):
        log.append(record(index))
    assert len(log.take(63, 1 << 20)) == 63
    log.acknowledge(63)
    assert log.take(37, 1 << 20) == [record(i) for i in range(64, 101)]  # 64 ends segment 1
    on_disk = sum(path.stat().st_size for path in segments_of(app, log.log_id))
    delivered = fmt.FILE_HEADER_BYTES + 63 * 128  # the limit counts undelivered bytes only
    assert limit.enforce(log, on_disk - delivered - 1) == [[record(i) for i in range(129, 193)]]
    log.close()


# -- spool status: which entries of a spool directory are apps -----------------------------


def test_status_shows_every_app_and_names_each_foreign_entry_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    apps = []
    for n in range(3):
        endpoint = f"http://127.0.0.1:{9000 + n}"
        app = spool.app_directory(spool_dir, endpoint, "wk_test")
        log = open_log(app)
        log.append(record(n))
        log.close()  # an orphan with one event
        spool.remember_endpoint(app, endpoint)
        apps.append((app.name, endpoint))
    foreign = [spool_dir / "notes.txt", spool_dir / "0123456789abcdef", spool_dir / "cache"]
    foreign[0].write_text("mine")
    foreign[1].write_text("a file named like an app")
    foreign[2].mkdir()
    with caplog.at_level("WARNING", logger="klime_mp"):
        found = spool.status(spool_dir)
    assert sorted((s.app, s.endpoint, s.pending) for s in found) == sorted(
        (name, endpoint, 1) for name, endpoint in apps
    )
    warnings = [r.getMessage() for r in caplog.records]
    assert sorted(warnings) == sorted(
        f"spool: skipping {path} (not an app directory)" for path in foreign
    )


# -- misuse, and a damaged file header -------------------------------------------------------


def test_acknowledging_a_negative_count_is_refused(app: Path) -> None:
    log = open_log(app)
    log.append(record(1))
    assert log.take(10, 1 << 20) == [record(1)]
    with pytest.raises(ValueError, match=r"count must be between 0 and 1 .* got -1"):
        log.acknowledge(-1)
    assert log.pending() == 1
    log.close()


def test_an_orphan_whose_segment_header_is_damaged_is_read_whole(app: Path) -> None:
    # The file header's checksum fails: its first record's number is unknown, but its
    # records are intact and read; nothing is counted as lost.
    name = leave_orphan(app, 1, 10)
    (segment,) = segments_of(app, name)
    with open(segment, "r+b") as file:
        file.seek(8)  # inside the first record's number in the file header
        file.write(b"\xff")
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert (orphan.pending(), orphan.torn) == (10, 0)
    assert orphan.take(100, 1 << 20) == [record(i) for i in range(1, 11)]
    orphan.acknowledge(10)
    orphan.release()


@pytest.mark.parametrize("per_segment", [64, 63])
def test_an_orphan_acknowledged_to_a_segment_boundary_counts_no_damage(
    app: Path, monkeypatch: pytest.MonkeyPatch, per_segment: int
) -> None:
    # The writer had its whole first segment delivered, so that segment was deleted, then
    # died: the second segment's file header says which number it starts at, so nothing is
    # missing before it. (Segments of 64 and of 63 records: an even and an odd boundary.)
    monkeypatch.setattr(spool, "SEGMENT_BYTES", fmt.FILE_HEADER_BYTES + per_segment * 128)
    log = open_log(app)
    for index in range(1, 101):
        log.append(record(index))
    assert len(log.take(per_segment, 1 << 20)) == per_segment
    log.acknowledge(per_segment)
    name = log.log_id
    log.close()
    assert len(segments_of(app, name)) == 1
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert (orphan.pending(), orphan.torn) == (100 - per_segment, 0)
    assert orphan.take(100, 1 << 20) == [record(i) for i in range(per_segment + 1, 101)]
    orphan.acknowledge(100 - per_segment)
    orphan.release()


def test_memory_holds_no_more_than_its_byte_limit_however_many_records_pass() -> None:
    # 1,000 bytes of memory for a sender that has fallen behind (an outage): after 100
    # records of 100 bytes, only the newest 10 are held, and the disk serves the rest.
    unread = Unread(origin=0, max_bytes=1000)
    for end in range(100, 10_100, 100):  # records ending at 100 ... 10,000
        unread.add(end, b"%05d" % end + b"." * 95)
    assert unread.take(8900, 100, 1 << 20) == ([], [])  # record 9,000 is not held
    payloads, ends = unread.take(9000, 100, 1 << 20)
    assert ends == list(range(9100, 10_100, 100))
    assert payloads[0][:5] == b"09100"


def test_status_adds_up_every_log_of_an_app(app: Path) -> None:
    # Two dead writers' logs (one with 2 damaged records), a live one (its damage is not
    # counted: its tail may be mid-write), dead ones with nothing left but their ledger, and
    # two of a newer klime_mp (one by its ledger, one by its segment), one whose ledger
    # is unreadable.
    damaged = leave_orphan(app, 1, 10)
    zero_records(segments_of(app, damaged)[0], 5, 2, 100)  # in the middle: 2 events
    leave_orphan(app, 11, 5)
    for n in range(4):  # dead ones with nothing left, listed before and after the others
        empty = leave_orphan(app, 16 + n, 1)
        segments_of(app, empty)[0].unlink()
    newer_ledger = leave_orphan(app, 17, 3)
    with open(app / f"{newer_ledger}.ledger", "r+b") as file:
        file.write(b"KSL3")
    newer_segment = leave_orphan(app, 20, 3)
    with open(segments_of(app, newer_segment)[0], "r+b") as file:
        body = struct.pack("<4sHHQ", fmt.FILE_MAGIC, 3, 0, 1)  # version 3
        file.write(body + struct.pack("<I", zlib.crc32(body)))
    unreadable = leave_orphan(app, 40, 4)  # its ledger damaged: all 4 count as pending
    (app / f"{unreadable}.ledger").write_bytes(b"\0" * 40)
    live = open_log(app)
    for index in range(30, 37):
        live.append(record(index))
    assert len(live.take(2, 1 << 20)) == 2
    live.acknowledge(2)  # 2 delivered, still in the segment being written
    zero_records(segments_of(app, live.log_id)[0], 6, 1, 100)  # 4 readable, not counted
    (found,) = spool.status(app.parent)
    assert (found.path, found.endpoint) == (app, None)
    assert (found.live, found.orphans, found.newer) == (1, 7, 2)
    assert (found.pending, found.torn) == (8 + 5 + 0 + 4 + 4, 2)
    live.close()


def test_a_log_is_detached_only_once_its_files_are_replaced_or_gone(app: Path) -> None:
    log = open_log(app)
    log.append(record(1))
    assert not log.detached()
    ledger = app / f"{log.log_id}.ledger"
    stranger = app / "stranger"
    stranger.write_bytes(ledger.read_bytes())
    os.replace(stranger, ledger)  # the same name, another file
    assert log.detached()
    log.close()
    other = open_log(app)
    assert not other.detached()
    for path in app.iterdir():
        path.unlink()
    app.rmdir()
    assert other.detached()
    other.close()


def test_a_segment_of_newer_records_without_a_file_header_is_left_and_shown(app: Path) -> None:
    # Records marked b"\xffKS3" (a newer klime_mp's), long enough to hold a file header:
    # never read as damage and deleted.
    name = leave_orphan(app, 1, 1)
    (segment,) = segments_of(app, name)
    segment.write_bytes(b"\xffKS3" + b"n" * 100)
    assert spool.claim_orphan(app) is None
    assert segment.read_bytes() == b"\xffKS3" + b"n" * 100
    (found,) = spool.status(app.parent)
    assert (found.newer, found.orphans, found.pending) == (1, 0, 0)


def test_size_limit_keeps_a_segment_whose_first_record_alone_is_in_flight(app: Path) -> None:
    log = open_log(app)
    for index in range(1, 201):
        log.append(record(index))
    assert len(log.take(65, 1 << 20)) == 65  # 65 opens segment 2
    on_disk = sum(path.stat().st_size for path in segments_of(app, log.log_id))
    assert limit.enforce(log, on_disk - 1) == [[record(i) for i in range(129, 193)]]
    log.close()


def test_an_orphan_released_part_way_keeps_the_rest_for_the_next_claimer(app: Path) -> None:
    leave_orphan(app, 1, 10)
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert orphan.take(3, 1 << 20) == [record(1), record(2), record(3)]
    orphan.acknowledge(3)
    orphan.release()  # an outage: the sender gives the rest back
    again = spool.claim_orphan(app)
    assert again is not None
    assert again.take(100, 1 << 20) == [record(i) for i in range(4, 11)]
    again.acknowledge(7)
    again.release()
