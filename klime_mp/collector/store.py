"""SQLite storage of received events, de-duplicated by messageId.

One connection serves every handler thread: SQLite allows only one writer at a time
anyway, and a single connection is the only way a ``:memory:`` database can be shared.
A lock serialises its use (``check_same_thread=False`` merely lifts sqlite3's check).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

from .validation import ValidEvent

_CACHE_KIB = 64 * 1024
_CHECKPOINT_PAGES = 8192  # about 32 MiB of WAL with the default 4 KiB pages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    message_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    event TEXT,
    user_id TEXT,
    group_id TEXT,
    timestamp TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL
)
"""

_INSERT = (
    "INSERT OR IGNORE INTO events"
    " (message_id, type, event, user_id, group_id, timestamp, body, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class InsertResult(NamedTuple):
    new: int
    duplicates: int


class StoreClosedError(RuntimeError):
    """The store was closed (the collector stopped); its data is no longer readable."""


class EventStore:
    """Thread-safe event table with an in-memory count that waiters can block on."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, the same way on every
        # Python version (the autocommit attribute only exists from 3.12 on).
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        # WAL lets readers of the file (tests, sqlite3 shell) run beside our writer;
        # NORMAL skips the fsync per commit, which a test collector does not need.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # Random messageIds scatter every insert over the primary-key index, so each
        # commit dirties many pages. A larger cache and rarer checkpoints (each one an
        # fsync) cut the server's CPU per batch by about a fifth in the benchmark.
        self._conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self._conn.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        self._conn.execute(_SCHEMA)
        row = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        self._count: int = row[0]

    def insert(self, events: Sequence[ValidEvent]) -> InsertResult:
        """Store events in one transaction; repeated message ids are kept once."""
        received_at = time.time()
        rows = [(*event, received_at) for event in events]
        with self._lock:
            self._check_open()
            before = self._conn.total_changes
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(_INSERT, rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            new = self._conn.total_changes - before
            self._count += new
            if new:
                self._changed.notify_all()
        return InsertResult(new, len(rows) - new)

    @property
    def count(self) -> int:
        """Number of unique events in the table."""
        return self._count

    def wait_for_count(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` events are stored or ``timeout`` passes."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count >= count, timeout)

    def page(self, after: int, limit: int) -> list[tuple[int, str]]:
        """(rowid, body) pairs with rowid > ``after``, oldest first."""
        with self._lock:
            self._check_open()
            cursor = self._conn.execute(
                "SELECT rowid, body FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, limit),
            )
            return cursor.fetchall()

    def column(self, name: str) -> list[str]:
        """One column of every stored event, oldest first."""
        if name not in ("message_id", "body"):
            raise ValueError(f"name must be 'message_id' or 'body', got {name!r}")
        with self._lock:
            self._check_open()
            rows = self._conn.execute(f"SELECT {name} FROM events ORDER BY rowid").fetchall()
        return [value for (value,) in rows]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the collector is stopped; read its events before stop()")
