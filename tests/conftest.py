"""Shared fixtures: a real local collector on 127.0.0.1, on a free port, per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp.collector import Collector
from klime_mp.collector.app import NEXT_AFTER_HEADER

WRITE_KEY = "test-write-key"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    """An in-process collector (a daemon thread). Not for tests that fork: use
    ``collector_process`` there, so no server thread is copied into the children."""
    with Collector(db=tmp_path / "events.sqlite3") as running:
        yield running


class CollectorProcess:
    """A collector in its own process (``python -m klime_mp collector``)."""

    def __init__(self, db: Path, *extra: str) -> None:
        self.db = db
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "klime_mp", "collector", "--port", "0", "--db", str(db), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # "klime collector listening on http://H:P"
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"collector did not start: {line!r}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/v1/stats", timeout=10) as reply:
            result: dict[str, Any] = json.load(reply)
        return result

    def events(self) -> list[dict[str, Any]]:
        """Every stored event, oldest first (pages through GET /v1/events)."""
        found: list[dict[str, Any]] = []
        after = "0"
        while True:
            url = f"{self.url}/v1/events?limit=1000&after={after}"
            with urllib.request.urlopen(url, timeout=10) as reply:
                page: list[dict[str, Any]] = json.load(reply)
                after = reply.headers[NEXT_AFTER_HEADER]
            if not page:
                return found
            found.extend(record["event"] for record in page)

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["stored"] >= count:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@pytest.fixture
def collector_process(tmp_path: Path) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(tmp_path / "events.sqlite3")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's real key or endpoint must never leak into a test.
    monkeypatch.delenv("KLIME_WRITE_KEY", raising=False)
    monkeypatch.delenv("KLIME_ENDPOINT", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
