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

from .query import LATEST_RUN, EventQuery
from .validation import ValidEvent, instant

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
    received_at REAL NOT NULL,
    run INTEGER NOT NULL DEFAULT 0,
    instant REAL
)
"""
_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY,
    name TEXT,
    started_at REAL NOT NULL
)
"""
# Columns added after the first release: a database file written by it gains them on
# open (instant, the event's timestamp in epoch seconds, is filled in once).
_ADDED_COLUMNS = {"run": "INTEGER NOT NULL DEFAULT 0", "instant": "REAL"}

_INSERT = (
    "INSERT OR IGNORE INTO events (message_id, type, event, user_id, group_id, timestamp,"
    " body, received_at, run, instant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class StoredEvent(NamedTuple):
    """One row of ``GET /v1/events``: the store's id, run and receipt time, and the
    event's body as stored (compact JSON)."""

    id: int
    run: int
    received_at: float
    body: str


class Run(NamedTuple):
    run: int
    name: str | None
    started_at: float
    events: int


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
        self._conn.execute(_RUNS_SCHEMA)
        self._add_missing_columns()
        row = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        self._count: int = row[0]
        row = self._conn.execute("SELECT COALESCE(MAX(run), 0) FROM runs").fetchone()
        self._run: int = row[0]

    def _add_missing_columns(self) -> None:
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(events)")}
        missing = [name for name in _ADDED_COLUMNS if name not in present]
        for name in missing:
            self._conn.execute(f"ALTER TABLE events ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
        if "instant" in missing:
            rows = self._conn.execute("SELECT rowid, timestamp FROM events").fetchall()
            self._conn.executemany(
                "UPDATE events SET instant = ? WHERE rowid = ?",
                [(instant(timestamp), rowid) for rowid, timestamp in rows],
            )

    def insert(self, events: Sequence[ValidEvent]) -> InsertResult:
        """Store events in one transaction; repeated message ids are kept once."""
        received_at = time.time()
        with self._lock:
            rows = [(*event, received_at, self._run, instant(event.timestamp)) for event in events]
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

    @property
    def run(self) -> int:
        """The run that new events join: 0 until the first ``start_run()``."""
        return self._run

    def start_run(self, name: str | None) -> Run:
        """Begin a new run; every event stored from now on carries its number."""
        with self._lock:
            self._check_open()
            started_at = time.time()
            cursor = self._conn.execute(
                "INSERT INTO runs (name, started_at) VALUES (?, ?)", (name, started_at)
            )
            self._run = int(cursor.lastrowid or 0)
            return Run(self._run, name, started_at, 0)

    def runs(self) -> list[Run]:
        """Every run started, oldest first, with the number of events it holds."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute(
                "SELECT runs.run, name, started_at, COUNT(events.rowid) FROM runs"
                " LEFT JOIN events ON events.run = runs.run GROUP BY runs.run ORDER BY runs.run"
            ).fetchall()
        return [Run(*row) for row in rows]

    def page(self, query: EventQuery) -> list[StoredEvent]:
        """The stored events ``query`` selects, oldest first."""
        conditions = ["rowid > ?"]
        values: list[object] = [query.after]
        for column, value in query.exact:
            conditions.append(f"{column} = ?")
            values.append(value)
        if query.since is not None:
            conditions.append("instant >= ?")
            values.append(query.since)
        if query.until is not None:
            conditions.append("instant < ?")
            values.append(query.until)
        with self._lock:
            self._check_open()
            if query.run is not None:
                conditions.append("run = ?")
                values.append(self._run if query.run == LATEST_RUN else query.run)
            cursor = self._conn.execute(
                "SELECT rowid, run, received_at, body FROM events"
                f" WHERE {' AND '.join(conditions)} ORDER BY rowid LIMIT ?",
                (*values, query.limit),
            )
            return [StoredEvent(*row) for row in cursor.fetchall()]

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
