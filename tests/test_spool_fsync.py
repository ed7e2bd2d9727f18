"""``spool_fsync_interval``: for a power loss, the spool's files are forced to disk every
so many seconds by a thread of the spool's own (never on a caller's thread); off by
default, when nothing is forced and no such thread runs. The option is validated."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector

KEY = "fsync-key"


class Flushes:
    """Spies on the real fdatasync/fsync (they still run): which files were forced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: list[str] = []
        self.seen = threading.Event()
        for name in ("fdatasync", "fsync"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._spy(real))

    def _spy(self, real: Any) -> Any:
        def forced(fd: int) -> None:
            real(fd)
            self.files.append(os.readlink(f"/proc/self/fd/{fd}"))
            if any(f.endswith(".seg") for f in self.files) and len(self.files) >= 4:
                self.seen.set()

        return forced


def test_with_an_interval_the_segments_and_the_directory_are_forced_to_disk(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = Flushes(monkeypatch)
    spool_dir = tmp_path / "spool"
    client = KlimeClient(KEY, collector.url, spool_dir=spool_dir, spool_fsync_interval=0.05)
    client.track("Durable", user_id="u")
    assert flushes.seen.wait(10)
    (app,) = [path for path in spool_dir.iterdir() if path.is_dir()]
    assert any(f.endswith(".seg") for f in flushes.files)
    assert str(app) in flushes.files  # the directory: new files' names survive too
    assert any(t.name == "klime-spool-sync" for t in threading.enumerate())
    assert client.shutdown()
    assert collector.stats().stored == 1


def test_by_default_nothing_is_forced_and_no_thread_runs(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = Flushes(monkeypatch)
    client = KlimeClient(KEY, collector.url, spool_dir=tmp_path / "spool")
    for _ in range(10):
        client.track("Default", user_id="u")
    assert client.flush(10)
    assert not any(t.name == "klime-spool-sync" for t in threading.enumerate())
    assert client.shutdown()
    assert flushes.files == []


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        ("1", TypeError, "spool_fsync_interval must be a number of seconds or None, got str"),
        (True, TypeError, "spool_fsync_interval must be a number of seconds or None, got bool"),
        (0, ValueError, "spool_fsync_interval must be a positive number of seconds, got 0"),
        (float("inf"), ValueError, "spool_fsync_interval must be a positive number"),
    ],
)
def test_a_bad_interval_is_refused_naming_the_argument(
    tmp_path: Path, value: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        KlimeClient(KEY, "http://127.0.0.1:9", spool_dir=tmp_path, spool_fsync_interval=value)  # type: ignore[arg-type]
