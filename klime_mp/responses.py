"""What a send returns or raises: the official SDK's BatchResponse and SendError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ValidationError:
    """One event the server rejected, by its index in the batch."""

    index: int
    message: str
    code: str


@dataclass(frozen=True)
class BatchResponse:
    """The server's answer to one accepted batch (HTTP 200)."""

    status: str
    accepted: int
    failed: int
    errors: list[ValidationError] | None = None


class SendError(Exception):
    """A synchronous send failed for good; ``events`` are the events not delivered."""

    def __init__(self, message: str, events: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.message = message
        self.events = events


class EventTooLargeError(ValueError):
    """An event serialized to more than the API's per-event limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes serialized; the Klime API accepts at most {limit}")
        self.size = size
        self.limit = limit
