"""Counters the collector keeps so tests can see what reached it and how."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CollectorStats:
    """A snapshot of the collector's counters (same fields as ``GET /v1/stats``).

    ``received`` counts raw receipts in well-formed batches, retries and invalid events
    included, so ``received == (stored events that were new) + duplicates + rejected``
    since the last reset. ``stored`` is the number of unique events in the database.

    ``unacknowledged`` counts valid events of batches that were stored but never
    answered (the ``drop_after_store`` fault): the client cannot know they arrived, so
    it must resend them. A client that resends nothing else keeps
    ``duplicates <= unacknowledged``.
    """

    requests: int
    connections: int
    received: int
    stored: int
    duplicates: int
    rejected: int
    unacknowledged: int
    status_counts: dict[str, int]
    faults_injected: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class StatsRecorder:
    """Thread-safe mutable counters behind ``CollectorStats`` snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._connections = 0
            self._received = 0
            self._duplicates = 0
            self._rejected = 0
            self._unacknowledged = 0
            self._statuses: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()

    def connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    def request_answered(self, status: int | None) -> None:
        """Count one batch request; ``None`` means it was dropped without an answer."""
        with self._lock:
            self._requests += 1
            if status is not None:
                self._statuses[str(status)] += 1

    def events_received(self, received: int, duplicates: int, rejected: int) -> None:
        with self._lock:
            self._received += received
            self._duplicates += duplicates
            self._rejected += rejected

    def events_unacknowledged(self, count: int) -> None:
        with self._lock:
            self._unacknowledged += count

    def fault_injected(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self, stored: int) -> CollectorStats:
        with self._lock:
            return CollectorStats(
                requests=self._requests,
                connections=self._connections,
                received=self._received,
                stored=stored,
                duplicates=self._duplicates,
                rejected=self._rejected,
                unacknowledged=self._unacknowledged,
                status_counts=dict(self._statuses),
                faults_injected=dict(self._faults),
            )
