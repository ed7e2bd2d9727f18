"""The spool's storage: records survive any death of their writer, a dead writer's log is
claimed by exactly one process, damage costs only the damaged record, the size limit drops
the oldest and says so, and an unusable directory fails at open, not later.

Real processes and real SIGKILL (tests/scripts/spool_scenarios.py); real os.fork.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import fork_helpers as h
import pytest

from klime_mp.spool import log as spool

SCRIPT = Path(__file__).resolve().parent / "scripts" / "spool_scenarios.py"
HEADER = 28  # bytes before each payload on disk (magic, crc, length, number, time)
FILE_HEADER = 20  # bytes at the start of each segment (magic, version, first number, crc)


def record(index: int, size: int = 0) -> bytes:
    # The same records as spool_scenarios.py writes.
    head = b"rec-%08d" % index
    return head + bytes([index % 251]) * max(0, size - len(head))


class Scripts:
    """Scenario processes, each in its own session; all killed at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def run(self, *args: object) -> tuple[int, bytes]:
        """Run to the end; its exit code (-9 for SIGKILL) and stdout."""
        proc = self.start(*args)
        out, err = proc.communicate(timeout=60)
        assert b"Traceback" not in err, err.decode()
        return proc.returncode, out

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by pytest-timeout; the script prints early
        assert line == b"ready\n", (line, proc.stderr.read() if proc.stderr else b"")

    def stop_all(self) -> None:
        for proc in self.started:
            h.kill_group(proc.pid)
            proc.communicate(timeout=30)


@pytest.fixture
def scripts() -> Iterator[Scripts]:
    running = Scripts()
    yield running
    running.stop_all()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return spool.app_directory(tmp_path / "spool", "http://127.0.0.1:9", "wk_test")


def open_log(
    app: Path, max_bytes: int = 1 << 30, lost: list[bytes] | None = None
) -> spool.EventLog:
    def on_loss(reason: str, records: list[bytes]) -> None:
        assert reason == "spool_full"
        if lost is not None:
            lost.extend(records)

    return spool.EventLog.open(app, max_bytes=max_bytes, on_loss=on_loss)


def read_all(reader: spool.EventLog | spool.Orphan, batch: int = 50) -> list[bytes]:
    found: list[bytes] = []
    while records := reader.take(batch, 1 << 20):
        found.extend(records)
        reader.acknowledge(len(records))
    return found


def leave_orphan(app: Path, records: list[bytes]) -> None:
    """A log whose writer closed without acknowledging: an orphan, in this process."""
    log = open_log(app)
    for data in records:
        log.append(data)
    log.close()


def segments(app: Path) -> list[Path]:
    return sorted(app.glob("*.seg"))


# -- the basic contract ---------------------------------------------------------------------


def test_app_directory_is_a_digest_of_endpoint_and_key(tmp_path: Path) -> None:
    one = spool.app_directory(tmp_path, "https://i.klime.com", "secret-key")
    assert one.parent == tmp_path
    assert len(one.name) == 16 and int(one.name, 16) >= 0
    assert "secret-key" not in str(one)
    assert one == spool.app_directory(str(tmp_path), "https://i.klime.com", "secret-key")
    assert one != spool.app_directory(tmp_path, "https://i.klime.com", "other-key")
    assert one != spool.app_directory(tmp_path, "https://eu.klime.com", "secret-key")


def test_taken_records_come_in_order_within_limits(app: Path) -> None:
    log = open_log(app)
    for index in range(10):
        log.append(record(index))
    assert log.pending() == 10
    assert log.take(3, 1 << 20) == [record(0), record(1), record(2)]
    # max_bytes: two 12-byte records fit in 24, a third does not.
    assert log.take(100, 24) == [record(3), record(4)]
    # One record always comes, even bigger than max_bytes.
    assert log.take(100, 1) == [record(5)]
    assert log.pending() == 10  # taken is not acknowledged
    log.acknowledge(4)
    assert log.pending() == 6
    log.rewind()  # records 4 and 5 were taken, not acknowledged: they come again
    assert log.take(100, 1 << 20) == [record(i) for i in range(4, 10)]
    log.acknowledge(6)
    assert log.pending() == 0
    assert log.take(100, 1 << 20) == []
    log.close()
    assert list(app.iterdir()) == []  # fully acknowledged: nothing left


def test_misuse_names_the_argument(app: Path) -> None:
    log = open_log(app)
    log.append(b"x")
    with pytest.raises(ValueError, match="max_events"):
        log.take(0, 10)
    with pytest.raises(ValueError, match="max_bytes"):
        log.take(1, 0)
    with pytest.raises(ValueError, match="count"):
        log.acknowledge(1)  # nothing taken
    with pytest.raises(TypeError, match="count"):
        log.acknowledge(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        spool.EventLog.open(app, max_bytes=0, on_loss=lambda reason, lost: None)
    with pytest.raises(TypeError, match="on_loss"):
        spool.EventLog.open(app, max_bytes=1, on_loss=None)  # type: ignore[arg-type]
    log.close()


def test_records_larger_than_a_read_ahead_read_back_whole(app: Path) -> None:
    sizes = [10, 200_000, 70_000, 3, 1_000_000, 65_536]
    log = open_log(app)
    for index, size in enumerate(sizes):
        log.append(record(index, size))
    assert read_all(log, batch=2) == [record(i, size) for i, size in enumerate(sizes)]
    log.close()


def test_files_are_private_whatever_the_umask(app: Path) -> None:
    old = os.umask(0)
    try:
        log = open_log(app)
        log.append(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(app.stat().st_mode) == 0o700
    assert stat.S_IMODE(app.parent.stat().st_mode) == 0o700
    files = list(app.iterdir())
    assert len(files) == 2  # the ledger and one segment
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    log.close()


def test_acknowledged_position_survives_the_writer(app: Path) -> None:
    log = open_log(app)
    for index in range(10):
        log.append(record(index))
    log.take(6, 1 << 20)
    log.acknowledge(4)
    log.close()  # 4 acknowledged, 2 in flight: left for a successor
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert orphan.pending() == 6
    assert read_all(orphan) == [record(i) for i in range(4, 10)]
    orphan.release()
    assert list(app.iterdir()) == []


def test_appenders_and_a_reader_in_threads_see_every_record_once(app: Path) -> None:
    log = open_log(app)
    caller_lock = threading.Lock()  # the caller's lock: one appender at a time
    per_thread, threads = 5_000, 4
    done = threading.Event()

    def appender(base: int) -> None:
        for index in range(base, base + per_thread):
            with caller_lock:
                log.append(record(index))

    read: list[bytes] = []

    def reader() -> None:
        while not done.is_set() or log.pending():
            batch = log.take(100, 1 << 20)
            read.extend(batch)
            log.acknowledge(len(batch))

    workers = [threading.Thread(target=appender, args=(n * per_thread,)) for n in range(threads)]
    sender = threading.Thread(target=reader)
    sender.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    sender.join(60)
    assert sorted(read) == [record(i) for i in range(per_thread * threads)]
    log.close()


# -- death of the writer ----------------------------------------------------------------------


def test_records_of_a_sigkilled_writer_are_claimed_in_order(app: Path, scripts: Scripts) -> None:
    code, _ = scripts.run("write_and_die", app, 500)
    assert code == -signal.SIGKILL
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert orphan.pending() == 500
    assert read_all(orphan) == [record(i) for i in range(500)]
    assert orphan.torn == 0
    orphan.release()
    assert spool.claim_orphan(app) is None
    assert list(app.iterdir()) == []  # all acknowledged: the claimer deleted it


def test_writer_killed_mid_write_loses_only_the_torn_record(
    tmp_path: Path, scripts: Scripts
) -> None:
    # Large records, so the kill can land inside a write (the kernel stops a write between
    # pages once a fatal signal is pending). It does in about one run in six here, so try a
    # few times for a real tear; every run must read back every whole record.
    size = 1_500_000
    for attempt in range(10):
        app = tmp_path / f"app-{attempt}"
        proc = scripts.start("write_until_killed", app, size)
        scripts.wait_ready(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        # A kill between creating a segment and writing its header leaves it empty.
        on_disk = sum(max(0, path.stat().st_size - FILE_HEADER) for path in segments(app))
        orphan = spool.claim_orphan(app)
        assert orphan is not None
        found = read_all(orphan, batch=3)
        assert len(found) >= 3
        assert found == [record(i, size) for i in range(len(found))]  # intact, in order
        # Whatever is on disk beyond those whole records is one torn record, counted once.
        torn_bytes = on_disk - len(found) * (HEADER + size)
        assert 0 <= torn_bytes < HEADER + size
        assert orphan.torn == (1 if torn_bytes else 0)
        orphan.release()
        if torn_bytes:
            break


def test_full_disk_fails_the_append_and_leaves_no_partial_record(
    app: Path, scripts: Scripts
) -> None:
    code, out = scripts.run("fill_disk", app, 10_000)
    assert code == -signal.SIGKILL
    written, error = map(int, out.split())
    assert written == (10_000 - FILE_HEADER) // (HEADER + 300)  # every record that fit
    assert error in (27, 28)  # EFBIG or ENOSPC, an OSError the caller falls back on
    sizes = [path.stat().st_size for path in segments(app)]
    assert sizes == [FILE_HEADER + written * (HEADER + 300)]
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert read_all(orphan) == [record(i, 300) for i in range(written)]
    assert orphan.torn == 0
    orphan.release()


# -- damage -----------------------------------------------------------------------------------


def test_segment_truncated_inside_a_record(app: Path) -> None:
    leave_orphan(app, [record(i) for i in range(10)])
    (segment,) = segments(app)
    os.truncate(segment, segment.stat().st_size - 5)  # the last record loses its tail
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert read_all(orphan) == [record(i) for i in range(9)]
    assert orphan.torn == 1
    orphan.release()
    assert list(app.iterdir()) == []  # the torn tail is not worth keeping


@pytest.mark.parametrize("where", ["magic", "checksum", "length", "payload"])
def test_one_damaged_record_costs_only_itself(app: Path, where: str) -> None:
    leave_orphan(app, [record(i) for i in range(10)])
    (segment,) = segments(app)
    data = bytearray(segment.read_bytes())
    record_size = HEADER + len(record(0))
    offset = FILE_HEADER + 4 * record_size
    offset += {"magic": 1, "checksum": 5, "length": 8, "payload": 30}[where]
    data[offset] ^= 0x40
    segment.write_bytes(bytes(data))
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert read_all(orphan) == [record(i) for i in range(10) if i != 4]
    assert orphan.torn == 1
    orphan.release()


def test_foreign_and_damaged_files_are_skipped_with_one_warning(
    app: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leave_orphan(app, [record(0)])
    (app / "notes.txt").write_text("not ours")
    (app / "subdir").mkdir()
    (app / "9-0000000a.ledger").write_bytes(b"garbage")  # a ledger that is not one
    with caplog.at_level(logging.WARNING, logger="klime_mp.spool.log"):
        found = []
        while (orphan := spool.claim_orphan(app)) is not None:
            found.extend(read_all(orphan))
            orphan.release()
        spool.claim_orphan(app)
    assert found == [record(0)]
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("notes.txt" in message for message in warnings) == 1
    assert sum("subdir" in message for message in warnings) == 1


def test_damaged_ledger_resends_the_whole_log(app: Path) -> None:
    log = open_log(app)
    for index in range(5):
        log.append(record(index))
    log.take(3, 1 << 20)
    log.acknowledge(3)
    log.close()
    (ledger,) = app.glob("*.ledger")
    ledger.write_bytes(b"\0" * 24)  # the acknowledged position is gone
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert read_all(orphan) == [record(i) for i in range(5)]  # duplicates, never losses
    orphan.release()


def test_ledger_left_under_its_temporary_name_is_cleaned_up(app: Path) -> None:
    leave_orphan(app, [])  # creates the directory
    temporary = app / ".123-0000abcd.ledger.tmp"
    temporary.write_bytes(b"")
    fresh = app / ".124-0000abcd.ledger.tmp"
    fresh.write_bytes(b"")
    os.utime(temporary, (1_000_000_000, 1_000_000_000))  # written long ago: a crash
    assert spool.claim_orphan(app) is None
    assert not temporary.exists()
    assert fresh.exists()  # might be a writer between create and rename: left alone


def test_segments_left_without_a_ledger_are_removed_once_old(app: Path) -> None:
    # A claimer deletes the ledger first, then the segments, once all is acknowledged; one
    # that died in between leaves segments nobody owns.
    leave_orphan(app, [record(0)])
    leave_orphan(app, [record(1)])
    old, young = sorted(app.glob("*.seg"))
    for segment in (old, young):
        log_name = segment.name.rsplit("-", 1)[0]
        (app / f"{log_name}.ledger").unlink()
    os.utime(old, (1_000_000_000, 1_000_000_000))
    assert spool.claim_orphan(app) is None
    assert not old.exists()
    assert young.exists()  # might be the first segment of a log being created right now


def test_closed_log_refuses_use(app: Path) -> None:
    log = open_log(app)
    log.append(b"x")
    log.sync()
    log.close()
    with pytest.raises(OSError):
        log.append(b"y")  # the caller falls back to memory, as for a failed write
    with pytest.raises(ValueError, match="closed"):
        log.take(1, 1)


# -- claiming -----------------------------------------------------------------------------------


def test_racing_claimers_read_every_record_exactly_once(
    app: Path, scripts: Scripts, tmp_path: Path
) -> None:
    expected = []
    for log_number in range(24):
        batch = [record(log_number * 1000 + i) for i in range(100)]
        leave_orphan(app, batch)
        expected.extend(batch)
    outs = [tmp_path / f"claimed-{n}.txt" for n in range(4)]
    racers = [scripts.start("claimer", app, out, 3) for out in outs]  # 4 processes x 3 threads
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write(b"go\n")
        racer.stdin.flush()
    for racer in racers:
        _, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err.decode()
    claimed = [line for out in outs for line in out.read_bytes().splitlines()]
    assert sorted(claimed) == sorted(expected)  # all of them, none twice
    assert list(app.iterdir()) == []


def test_threads_of_one_process_never_claim_the_same_orphan(app: Path) -> None:
    for log_number in range(20):
        leave_orphan(app, [record(log_number * 100 + i) for i in range(30)])
    claimed: list[bytes] = []
    guard = threading.Lock()
    start = threading.Barrier(6)

    def claimer() -> None:
        start.wait()
        while (orphan := spool.claim_orphan(app)) is not None:
            time.sleep(0.005)  # widen the race: hold it while the others look for orphans
            records = read_all(orphan, batch=4)
            with guard:
                claimed.extend(records)
            orphan.release()

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == sorted(record(n * 100 + i) for n in range(20) for i in range(30))


def test_ledger_deleted_between_open_and_lock_is_not_claimed(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another claimer finished the log (and deleted it) after we opened the ledger and
    # before we locked it: the lock we get is on a file no longer in the directory.
    leave_orphan(app, [record(0)])
    (ledger,) = app.glob("*.ledger")
    real_open = os.open

    def open_then_lose(path: str, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        if os.fspath(path) == str(ledger):
            os.rename(path, app / "gone.ledger")  # its inode lives on elsewhere
        return fd

    monkeypatch.setattr(os, "open", open_then_lose)
    assert spool.claim_orphan(app) is None


def test_claimer_killed_midway_leaves_only_the_rest(app: Path, scripts: Scripts) -> None:
    leave_orphan(app, [record(i) for i in range(100)])
    code, _ = scripts.run("claim_and_die", app, 40, 25)  # took 40, acknowledged 25, died
    assert code == -signal.SIGKILL
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert read_all(orphan) == [record(i) for i in range(25, 100)]
    orphan.release()


def test_live_writer_is_never_claimed_and_its_death_frees_the_log(
    app: Path, scripts: Scripts
) -> None:
    proc = scripts.start("hold", app, 20)
    scripts.wait_ready(proc)
    assert spool.claim_orphan(app) is None  # alive: its lock is held
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert read_all(orphan) == [record(i) for i in range(20)]
    orphan.release()


def test_log_named_after_a_live_pid_is_claimable_when_unlocked(app: Path, scripts: Scripts) -> None:
    # PID reuse: the dead writer's PID now belongs to a live process. Only the lock
    # counts, so the log is still an orphan.
    proc = scripts.start("hold", app, 0)  # some live process, owning an empty log
    scripts.wait_ready(proc)
    leave_orphan(app, [record(i) for i in range(5)])
    (ledger,) = [p for p in app.glob("*.ledger") if not p.name.startswith(f"{proc.pid}-")]
    old_id = ledger.name[: -len(".ledger")]
    new_id = f"{proc.pid}-{old_id.split('-')[1]}"
    for path in app.glob(f"{old_id}*"):
        path.rename(app / path.name.replace(old_id, new_id))
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert orphan.name == new_id
    assert read_all(orphan) == [record(i) for i in range(5)]
    orphan.release()
    assert spool.claim_orphan(app) is None  # and the live one stays its owner's


# -- unusable directories ---------------------------------------------------------------------


def test_spool_path_under_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(spool.SpoolUnavailable, match="a-file"):
        open_log(blocker / "app")
    with pytest.raises(spool.SpoolUnavailable):
        open_log(blocker)  # the app directory itself is a file
    assert spool.claim_orphan(blocker / "app") is None
    assert spool.claim_orphan(blocker) is None


def test_read_only_directory_is_unavailable(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir(mode=0o500)
    probe = app / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        pass
    else:
        pytest.skip("writes to a 0500 directory succeed here (root); the file test covers it")
    try:
        with pytest.raises(spool.SpoolUnavailable, match="Permission denied"):
            open_log(app)
    finally:
        app.chmod(0o700)


# -- the size limit ---------------------------------------------------------------------------


def test_size_limit_drops_the_oldest_segments_and_reports_them(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 8 * 1024)
    lost: list[bytes] = []
    log = open_log(app, max_bytes=32 * 1024, lost=lost)
    count = 3000  # 32 bytes each on disk: about 94 KiB in all
    for index in range(count):
        log.append(record(index))
    total = sum(path.stat().st_size for path in segments(app))
    assert total <= 32 * 1024 + 8 * 1024  # the limit, plus the segment being written
    assert lost, "nothing was dropped"
    # The oldest went, in order; what is left is exactly the rest, in order.
    assert lost == [record(i) for i in range(len(lost))]
    assert log.pending() == count - len(lost)
    assert read_all(log) == [record(i) for i in range(len(lost), count)]
    log.close()


def test_size_limit_takes_orphans_but_never_a_live_process_log(
    app: Path, scripts: Scripts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 8 * 1024)
    orphaned = [record(100_000 + i, 100) for i in range(100)]  # ~12 KiB, the oldest
    leave_orphan(app, orphaned)
    proc = scripts.start("hold", app, 100)  # live, ~3 KiB
    scripts.wait_ready(proc)
    live_files = sorted(p.name for p in app.iterdir() if p.name.startswith(f"{proc.pid}-"))
    lost: list[bytes] = []
    log = open_log(app, max_bytes=24 * 1024, lost=lost)
    for index in range(800):  # ~26 KiB of our own
        log.append(record(index))
    assert set(orphaned) <= set(lost)  # the orphan (oldest) went first, reported
    assert sorted(p.name for p in app.iterdir() if p.name.startswith(f"{proc.pid}-")) == (
        live_files
    )
    own = read_all(log)
    assert sorted(lost + own) == sorted([*orphaned, *(record(i) for i in range(800))])
    log.close()


def test_segment_in_flight_is_not_dropped(app: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 4 * 1024)
    lost: list[bytes] = []
    log = open_log(app, max_bytes=16 * 1024, lost=lost)
    for index in range(50):
        log.append(record(index))
    in_flight = log.take(10, 1 << 20)  # the sender is posting these (say, an outage)
    for index in range(50, 1000):
        log.append(record(index))
    assert lost and not set(in_flight) & set(lost)
    log.rewind()  # the sender gives up on that batch: it must come again, from disk
    rest = read_all(log)
    assert rest[:10] == in_flight
    assert sorted(lost + rest) == [record(i) for i in range(1000)]
    log.close()


def test_size_limit_racing_the_reader_loses_or_delivers_each_record_once(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sender reads outside the log's lock; a segment dropped meanwhile must not be
    # both reported lost and returned by take().
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 2 * 1024)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen the race
    lost: list[bytes] = []
    log = open_log(app, max_bytes=6 * 1024, lost=lost)
    count = 30_000
    done = threading.Event()
    read: list[bytes] = []

    def appender() -> None:
        for index in range(count):
            log.append(record(index))
        done.set()

    def reader() -> None:
        deadline = time.monotonic() + 60  # a count gone wrong must not spin forever
        while (not done.is_set() or log.pending()) and time.monotonic() < deadline:
            batch = log.take(50, 1 << 20)
            read.extend(batch)
            log.acknowledge(len(batch))
            # Pacing, not waiting: at most 100,000 records/s read, slower than the appender
            # on any machine, so a backlog over the limit builds up and segments are dropped.
            time.sleep(0.0005)

    threads = [threading.Thread(target=appender), threading.Thread(target=reader)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert lost, "the size limit was never reached: the race was not run"
    assert not set(lost) & set(read)
    assert sorted(lost + read) == [record(i) for i in range(count)]
    log.close()


# -- fork --------------------------------------------------------------------------------------


# Under pytest-xdist the worker runs a thread of its own; the children here touch only files.
FORK_IN_THREADED_WORKER = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


@pytest.mark.fork
@FORK_IN_THREADED_WORKER
def test_forked_child_abandons_the_parent_log_and_claims_nothing(app: Path) -> None:
    log = open_log(app)
    for index in range(10):
        log.append(record(index))

    def child() -> None:
        log.abandon()
        if spool.claim_orphan(app) is not None:
            os._exit(3)  # claimed its live parent's log
        states = spool.status(app.parent)
        if [(s.live, s.orphans, s.pending) for s in states] != [(1, 0, 10)]:
            os._exit(4)

    assert h.reap(h.fork(child)) == 0
    for index in range(10, 20):
        log.append(record(index))
    assert read_all(log) == [record(i) for i in range(20)]
    log.close()
    assert list(app.iterdir()) == []  # the child deleted nothing and kept nothing alive


@pytest.mark.fork
@FORK_IN_THREADED_WORKER
def test_parent_death_frees_its_log_for_a_forked_child(app: Path) -> None:
    # POSIX locks are not inherited: a child that outlives its parent claims its log, even
    # one that never called abandon() (forked from C, say) and still has the descriptors.
    result_read, result_write = os.pipe()

    def middle() -> None:
        log = open_log(app)
        for index in range(7):
            log.append(record(index))
        middle_pid = os.getpid()

        def grandchild() -> None:
            deadline = time.monotonic() + 20
            while os.getppid() == middle_pid and time.monotonic() < deadline:
                time.sleep(0.01)  # until the parent is gone and this one reparented
            orphan = spool.claim_orphan(app)
            ok = orphan is not None and read_all(orphan) == [record(i) for i in range(7)]
            if orphan is not None:
                orphan.release()
            os.write(result_write, b"ok" if ok else b"no")

        h.fork(grandchild)
        os.kill(os.getpid(), signal.SIGKILL)

    middle_pid = h.fork(middle)
    os.close(result_write)
    assert h.reap(middle_pid) == -signal.SIGKILL
    assert os.read(result_read, 2) == b"ok"  # EOF (b"") if the grandchild died
    os.close(result_read)
    assert list(app.iterdir()) == []  # claimed, read in full, deleted


# -- status ------------------------------------------------------------------------------------


def test_status_counts_pending_live_and_orphaned(
    app: Path, scripts: Scripts, tmp_path: Path
) -> None:
    leave_orphan(app, [record(i) for i in range(30)])
    proc = scripts.start("hold", app, 12)
    scripts.wait_ready(proc)
    log = open_log(app)
    log.append(record(99))
    (state,) = spool.status(tmp_path / "spool")
    assert state.app == app.name
    assert state.pending == 30 + 12 + 1
    assert (state.live, state.orphans, state.segments) == (2, 1, 3)
    assert state.bytes == sum(p.stat().st_size for p in segments(app))
    assert state.oldest_pending_age is not None and 0 <= state.oldest_pending_age < 600
    log.close()


def test_status_command_prints_a_table_and_json(app: Path, tmp_path: Path) -> None:
    leave_orphan(app, [record(i) for i in range(30)])
    root = tmp_path / "spool"
    command = [sys.executable, "-m", "klime_mp", "spool", "status"]
    table = subprocess.run([*command, str(root)], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:4] == ["APP", "ENDPOINT", "SEGMENTS", "PENDING"]
    assert row.split()[:4] == [app.name, "?", "1", "30"]  # no endpoint file: made by 0.1.0
    raw = subprocess.run([*command, "--json", str(root)], capture_output=True, timeout=60)
    (entry,) = json.loads(raw.stdout)
    assert (entry["app"], entry["pending"], entry["orphans"], entry["live"]) == (
        app.name,
        30,
        1,
        0,
    )
    missing = subprocess.run(
        [*command, str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_a_claimer_counts_what_the_dead_writer_had_taken_for_sending(tmp_path: Path) -> None:
    # The writer took 30 records for sending and had 10 of them acknowledged when it
    # "died" (closed without acknowledging the rest): the 20 in flight may have reached
    # the server, so a claimer that sends them again counts them as resent; the 70
    # never taken are not.
    app = tmp_path / "app"
    log = spool.EventLog.open(app, max_bytes=64 * 1024 * 1024, on_loss=lambda reason, records: None)
    for n in range(100):
        log.append(b'{"n":%d}' % n)
    assert len(log.take(30, 1 << 20)) == 30
    log.acknowledge(10)
    log.close()
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    taken = orphan.take(100, 1 << 20)
    assert len(taken) == 90 and taken[0] == b'{"n":10}'
    assert orphan.resent == 20
    orphan.rewind()  # taken again after a failed send: not counted twice
    orphan.take(100, 1 << 20)
    assert orphan.resent == 20
    orphan.acknowledge(90)
    orphan.release()


def test_size_limit_counts_only_undelivered_bytes(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 64 * 1024)
    monkeypatch.setattr(spool, "ROLL_ACKED_BYTES", 1 << 20)  # delivered bytes stay on disk
    monkeypatch.setattr(spool, "CHECK_EVERY_BYTES", 4 * 1024)
    orphaned = [record(100_000 + i, 100) for i in range(100)]  # ~12 KiB, undelivered
    leave_orphan(app, orphaned)
    lost: list[bytes] = []
    log = open_log(app, max_bytes=24 * 1024, lost=lost)
    for index in range(1000):  # ~30 KiB written, all of it delivered as it goes
        log.append(record(index))
        if index % 10 == 9:
            log.acknowledge(len(log.take(10, 1 << 20)))
    assert sum(path.stat().st_size for path in segments(app)) > 40 * 1024
    assert lost == []  # 12 KiB undelivered is under the limit: the orphan stays whole
    log.close()
    orphan = spool.claim_orphan(app)
    assert orphan is not None and read_all(orphan) == orphaned
    orphan.release()


def test_a_delivered_segment_leaves_the_disk_at_its_acknowledgement(app: Path) -> None:
    log = open_log(app)
    count = 700  # 100-byte records: more than ROLL_ACKED_BYTES (64 KiB) on disk
    for index in range(count):
        log.append(record(index, 100))
    assert read_all(log, batch=100) == [record(i, 100) for i in range(count)]
    on_disk = sum(path.stat().st_size for path in segments(app))
    assert on_disk < spool.ROLL_ACKED_BYTES  # the acknowledged segment was rolled and freed
    log.append(record(count))  # and the log goes on in the next segment
    assert read_all(log) == [record(count)]
    log.close()
