"""The in-memory event queue: what the sender reads when there is no spool (or the
spool's disk failed). It has the spool's reading interface (``take``, ``acknowledge``,
``rewind``, ``pending``), so the sender treats both alike.

Not thread-safe by itself: the worker appends and takes under its own lock.
"""

from __future__ import annotations

from collections import deque


class MemoryQueue:
    def __init__(self) -> None:
        self._waiting: deque[bytes] = deque()
        self._taken: list[bytes] = []  # handed to the sender, not yet settled

    def append(self, data: bytes) -> None:
        self._waiting.append(data)

    def take(self, max_events: int, max_bytes: int) -> list[bytes]:
        """The oldest waiting events: at most ``max_events``, at most ``max_bytes``
        counting a comma after each, and at least one if any waits."""
        batch: list[bytes] = []
        budget = max_bytes
        waiting = self._waiting
        while waiting and len(batch) < max_events:
            cost = len(waiting[0]) + 1
            if cost > budget and batch:
                break
            budget -= cost
            batch.append(waiting.popleft())
        self._taken.extend(batch)
        return batch

    def acknowledge(self, count: int) -> None:
        """The oldest ``count`` taken events are settled (sent, or reported lost)."""
        del self._taken[:count]

    def rewind(self) -> None:
        """Taken but unsettled events go back to the front, in their order."""
        self._waiting.extendleft(reversed(self._taken))
        self._taken.clear()

    def pending(self) -> int:
        """Events appended and not yet settled."""
        return len(self._waiting) + len(self._taken)

    def waiting(self) -> int:
        """Events not yet taken."""
        return len(self._waiting)

    def clear(self) -> list[bytes]:
        """Remove every unsettled event (taken ones first) and return them."""
        rest = [*self._taken, *self._waiting]
        self._taken.clear()
        self._waiting.clear()
        return rest
