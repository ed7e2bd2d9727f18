"""What a send returns or raises: the official SDK's BatchResponse and SendError."""

from __future__ import annotations

from dataclasses import dataclass


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
