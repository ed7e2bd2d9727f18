"""The Klime protocol's rules for one batch body and for each event in it.

Batch-level problems (bad JSON, wrong shape, too many events) reject the whole
request with 400; event-level problems reject only that event, which is reported by
index while its valid siblings are stored, as the real API does.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, NamedTuple

from klime_mp.wire import MAX_EVENT_BYTES

MAX_BATCH_EVENTS = 100
EVENT_TYPES = frozenset({"track", "identify", "group"})

# An ISO 8601 date and time; seconds, fraction and offset are optional. The
# standard library's fromisoformat() only accepts the trailing "Z" from 3.11 on.
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?"
    r"(?:[Zz]|[+-](\d{2})(?::?(\d{2}))?)?",
    re.ASCII,
)

# Events come from json.loads, so they cannot be circular: skipping the check saves
# time on the hot path. ensure_ascii=False keeps the size close to what was sent.
# allow_nan=False: a literal like 1e400 is valid JSON but parses to infinity, which
# would be stored as the non-JSON token Infinity.
_COMPACT = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, check_circular=False, allow_nan=False
)


class BatchError(ValueError):
    """The request body as a whole breaks the protocol (answered with 400)."""


class ValidEvent(NamedTuple):
    """One accepted event, in the column order of the store's ``events`` table."""

    message_id: str
    type: str
    event: str | None
    user_id: str | None
    group_id: str | None
    timestamp: str
    body: str


class EventError(NamedTuple):
    """Why one event was rejected; ``code`` is stable, ``message`` is for people."""

    code: str
    message: str


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; storing them would poison later readers.
    raise ValueError(f"non-standard JSON constant {name}")


_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_batch(body: bytes) -> list[Any]:
    """Return the list of raw events in ``body`` or raise BatchError."""
    try:
        document = _STRICT_DECODER.decode(body.decode("utf-8"))
    except RecursionError:
        raise BatchError("JSON nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
        raise BatchError(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BatchError("body must be a JSON object")
    batch = document.get("batch")
    if not isinstance(batch, list):
        raise BatchError("body must have a 'batch' list")
    if not batch:
        raise BatchError("batch is empty")
    if len(batch) > MAX_BATCH_EVENTS:
        raise BatchError(f"batch has {len(batch)} events; at most {MAX_BATCH_EVENTS} allowed")
    return batch


def _text(event: dict[str, Any], key: str) -> str | None:
    """The value under ``key`` when it is a non-empty string, else None."""
    value = event.get(key)
    return value if isinstance(value, str) and value else None


def is_timestamp(value: object) -> bool:
    """True for an ISO 8601 date-time string that names a real instant."""
    if not isinstance(value, str):
        return False
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, off_hours, off_minutes = match.groups()
    if int(off_hours or 0) > 23 or int(off_minutes or 0) > 59:
        return False
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError:  # month 13, February 30, hour 24 ...
        return False
    return True


def instant(value: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 date-time (UTC when it names no
    offset), or None when ``value`` is not one; for the collector's time filters."""
    match = _TIMESTAMP.fullmatch(value)
    if match is None or not is_timestamp(value):
        return None
    year, month, day, hour, minute, second, off_hours, off_minutes = match.groups()
    fraction = re.search(r"[.,](\d+)", value[19:] if second else "")
    moment = datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second or 0),
        tzinfo=timezone.utc,
    ).timestamp()
    if fraction is not None:
        moment += float("0." + fraction.group(1))
    sign = -1 if "-" in value[16:] else 1
    offset = int(off_hours or 0) * 3600 + int(off_minutes or 0) * 60
    return moment - sign * offset


def _identity_problem(event: dict[str, Any], kind: str) -> EventError | None:
    user_id, group_id = _text(event, "userId"), _text(event, "groupId")
    if kind == "track" and user_id is None and group_id is None:
        return EventError("missing_identity", "track needs a userId or a groupId")
    if kind == "identify" and user_id is None:
        return EventError("missing_user_id", "identify needs a userId")
    if kind == "group" and group_id is None:
        return EventError("missing_group_id", "group needs a groupId")
    # An optional id that is present must still be usable as an id.
    if user_id is None and "userId" in event and kind != "identify":
        return EventError("invalid_user_id", "userId must be a non-empty string")
    if group_id is None and "groupId" in event and kind == "track":
        return EventError("invalid_group_id", "groupId must be a non-empty string")
    return None


def _field_problem(event: dict[str, Any]) -> EventError | None:
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        return EventError("invalid_type", "type must be one of group, identify, track")
    if _text(event, "messageId") is None:
        return EventError("missing_message_id", "messageId must be a non-empty string")
    if not is_timestamp(event.get("timestamp")):
        return EventError("invalid_timestamp", "timestamp must be an ISO 8601 date-time")
    if kind == "track" and _text(event, "event") is None:
        return EventError("missing_event", "track needs a non-empty event name")
    problem = _identity_problem(event, kind)
    if problem is not None:
        return problem
    if "properties" in event and not isinstance(event["properties"], dict):
        return EventError("invalid_properties", "properties must be an object")
    if "traits" in event and not isinstance(event["traits"], dict):
        return EventError("invalid_traits", "traits must be an object")
    return None


def check_event(event: Any) -> ValidEvent | EventError:
    """Validate one raw event and, when valid, serialize it for storage."""
    if not isinstance(event, dict):
        return EventError("invalid_event", "event must be a JSON object")
    problem = _field_problem(event)
    if problem is not None:
        return problem
    try:
        body = _COMPACT.encode(event)
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates such as "\ud800" cannot be stored
        return EventError("invalid_encoding", "event contains text that is not valid Unicode")
    except RecursionError:
        return EventError("invalid_event", "event is nested too deeply")
    except ValueError:  # a number beyond the range of a double (1e400)
        return EventError("invalid_number", "event contains a number out of range")
    if size > MAX_EVENT_BYTES:
        return EventError(
            "event_too_large", f"event is {size} bytes; at most {MAX_EVENT_BYTES} allowed"
        )
    # _field_problem guaranteed these are strings.
    return ValidEvent(
        event["messageId"],
        event["type"],
        _text(event, "event"),
        _text(event, "userId"),
        _text(event, "groupId"),
        event["timestamp"],
        body,
    )


class CheckedBatch(NamedTuple):
    valid: list[ValidEvent]
    errors: list[tuple[int, EventError]]


def check_batch(events: list[Any]) -> CheckedBatch:
    """Split a parsed batch into storable events and (index, error) pairs."""
    valid: list[ValidEvent] = []
    errors: list[tuple[int, EventError]] = []
    for index, raw in enumerate(events):
        result = check_event(raw)
        if isinstance(result, ValidEvent):
            valid.append(result)
        else:
            errors.append((index, result))
    return CheckedBatch(valid, errors)
