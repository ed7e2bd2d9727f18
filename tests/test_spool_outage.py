"""A spool that stops working says so once and comes back by itself: a full disk, a
read-only one, a directory removed under the running process. Real filesystems (a small
tmpfs, remounted read-only), a real collector process brought up at the end.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from klime_mp import KlimeClient
from klime_mp.delivery import spooled
from klime_mp.errors import SpoolUnavailable
from klime_mp.spool.log import status as spool_status
from tests.conftest import CollectorProcess
from tests.test_spool_client import KEY, late_collector  # noqa: F401 (a fixture)
from tests.test_spool_edges import mount_tmpfs

pytestmark = pytest.mark.fork


@pytest.fixture
def disk_256k(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "disk", "256k")


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spooled, "RETRY_INTERVAL_S", 0.2)
    monkeypatch.setattr(spooled, "CHECK_INTERVAL_S", 0.0)  # every append checks its files


class Errors:
    """What on_error received; ``spool`` is set at the first SpoolUnavailable."""

    def __init__(self) -> None:
        self.received: list[BaseException] = []
        self.spool = threading.Event()

    def __call__(self, error: BaseException, events: object) -> None:
        self.received.append(error)
        if isinstance(error, SpoolUnavailable):
            self.spool.set()

    def spool_reports(self) -> list[str]:
        return [str(e) for e in self.received if isinstance(e, SpoolUnavailable)]


def on_disk(spool: Path) -> int:
    if not spool.exists():
        return 0
    return sum(state.pending for state in spool_status(spool))


def track_until_durable(client: KlimeClient, spool: Path, before: int) -> int:
    """Track one event at a time until one reaches the disk; how many were tracked."""
    deadline = time.monotonic() + 10
    tracked = 0
    while time.monotonic() < deadline:
        client.track("After", user_id="u")
        tracked += 1
        if on_disk(spool) > before:
            return tracked
        threading.Event().wait(0.05)  # the retry interval (0.2 s) has to pass
    raise AssertionError(f"the spool did not come back: {client.stats()}")


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def watched_client(
    url: str, spool: Path, errors: Errors, caplog: pytest.LogCaptureFixture
) -> KlimeClient:
    """A spooled client whose reports go to ``errors`` and whose spool lines ``caplog`` sees."""
    caplog.set_level(logging.WARNING, logger="klime_mp")
    return KlimeClient(
        KEY, url, spool_dir=spool, on_error=errors, retry_initial_delay=50, shutdown_timeout=20
    )


def spool_lines(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_a_full_disk_is_said_once_counted_and_retried_until_the_spool_works_again(
    disk_256k: Path,
    fast_retry: None,
    late_collector: tuple[str, Callable[[], CollectorProcess]],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, start = late_collector
    spool = disk_256k / "spool"
    errors = Errors()
    client = watched_client(url, spool, errors, caplog)
    client.track("Before", user_id="u")
    assert on_disk(spool) == 1
    filler = fill(disk_256k)
    for _ in range(50):
        client.track("Full", user_id="u")  # never raises: to memory
    assert client.stats().spool_failures == 1
    assert errors.spool.wait(10)  # reported by the sender, not on the caller's thread
    (report,) = errors.spool_reports()
    assert "No space left on device" in report, report
    assert len(spool_lines(caplog, "the spool stopped working")) == 1

    filler.unlink()
    before = on_disk(spool)
    after = track_until_durable(client, spool, before)
    assert on_disk(spool) == before + 1  # durable again: the next event is on disk
    assert len(spool_lines(caplog, "the spool works again")) == 1
    assert client.stats().spool_failures == 1  # one episode
    assert len(errors.spool_reports()) == 1

    collector = start()
    assert client.flush(20)
    client.shutdown()
    assert collector.wait_for(1 + 50 + after)
    assert collector.stats()["stored"] == 1 + 50 + after


def test_a_directory_removed_under_a_running_process_is_noticed_and_made_again(
    tmp_path: Path,
    fast_retry: None,
    late_collector: tuple[str, Callable[[], CollectorProcess]],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, start = late_collector
    spool = tmp_path / "spool"
    errors = Errors()
    client = watched_client(url, spool, errors, caplog)
    for _ in range(5):
        client.track("Before", user_id="u")
    assert on_disk(spool) == 5
    shutil.rmtree(spool)
    for _ in range(7):
        client.track("After", user_id="u")
    assert on_disk(spool) == 7  # in a new log: a SIGKILL now would not lose them
    assert client.stats().spool_failures == 1
    assert errors.spool.wait(10)
    (report,) = errors.spool_reports()
    assert "removed" in report and "5 events" in report, report
    assert len(spool_lines(caplog, "the spool stopped working")) == 1

    collector = start()
    assert client.flush(20)  # the 5 still in the removed log are sent from its open files
    client.shutdown()
    assert collector.wait_for(12)
    assert collector.stats()["stored"] == 12
    assert on_disk(spool) == 0


def test_a_read_only_disk_at_start_is_retried_until_it_is_writable(
    disk_256k: Path,
    fast_retry: None,
    late_collector: tuple[str, Callable[[], CollectorProcess]],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, start = late_collector
    spool = disk_256k / "spool"
    subprocess.run(["mount", "-o", "remount,ro", str(disk_256k)], check=True)
    errors = Errors()
    client = watched_client(url, spool, errors, caplog)
    for _ in range(10):
        client.track("Read-only", user_id="u")
    assert client.stats().spool_failures == 1
    assert errors.spool.wait(10)
    (report,) = errors.spool_reports()
    assert "Read-only file system" in report, report

    subprocess.run(["mount", "-o", "remount,rw", str(disk_256k)], check=True)
    after = track_until_durable(client, spool, 0)
    assert on_disk(spool) == 1
    assert client.stats().spool_failures == 1
    assert len(spool_lines(caplog, "the spool stopped working")) == 1

    collector = start()
    assert client.flush(20)
    client.shutdown()
    assert collector.wait_for(10 + after)
    assert collector.stats()["stored"] == 10 + after
