"""Every exception klime_mp raises or reports, under one base class.

``except klime_mp.KlimeError`` catches them all. Each keeps the base class it had
before this module gathered them (``EventTooLargeError`` and the import's line errors
are ``ValueError`` too), so existing ``except`` clauses still match.
"""

from __future__ import annotations

from typing import Any


class KlimeError(Exception):
    """The base of every klime_mp error."""


class SendError(KlimeError):
    """A synchronous send failed for good; ``events`` are the events not delivered."""

    def __init__(self, message: str, events: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.message = message
        self.events = events


class EventTooLargeError(KlimeError, ValueError):
    """An event serialized to more than the API's per-event limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes serialized; the Klime API accepts at most {limit}")
        self.size = size
        self.limit = limit


class DeliveryError(KlimeError):
    """A batch could not be delivered. ``reason`` is its ``Stats.dropped`` key,
    ``status`` the last HTTP status, if any."""

    def __init__(self, message: str, reason: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


class LossReport(KlimeError):
    """What ``on_error`` receives for events lost without an HTTP failure of their own
    (a full queue, a call after shutdown, the spool's size limit...).

    ``reason`` is the ``Stats.dropped`` key; ``count`` the number of events lost, which
    can exceed the events attached when a long overflow parked more than it keeps."""

    def __init__(self, message: str, reason: str, count: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.count = count


class SpoolUnavailable(KlimeError):
    """The spool directory cannot be used; the message says why."""


class SpoolNewerFormat(KlimeError):
    """A spool file written by a newer klime_mp: left as it is, never read nor deleted."""

    def __init__(self, path: str, version: str) -> None:
        super().__init__(f"{path} is in format {version}, newer than this klime_mp reads")
        self.path = path


class SpoolForeignOwner(KlimeError):
    """A spool file of another user: its events are not sent with our key (it may have
    been planted), nor deleted; it is left as it is."""


class LineError(KlimeError, ValueError):
    """Why one line of an import is not a valid event."""


class HeaderError(KlimeError, ValueError):
    """An import's CSV header cannot be read: the whole file is unusable."""


class ImportStopped(KlimeError):
    """An import stopped sending: the server is unreachable or refuses every batch."""


class BeforeSendError(KlimeError):
    """``before_send`` raised, or returned something that cannot be sent: the event is
    dropped (failing closed: the hook may be what keeps personal data out). The hook's
    own exception, if any, is the ``__cause__``."""
