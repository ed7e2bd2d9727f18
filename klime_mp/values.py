"""The values of one event: the rules for the arguments, JSON's conversions, and the
search that names what cannot be encoded.

``events`` encodes; this module decides what may be encoded and says why not. Nothing
here is on the fast path of ``track()`` except ``convert`` (json's ``default`` hook,
only for the types json does not know) and the argument checks of the uncommon shapes.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import math
import uuid
from collections.abc import Mapping
from typing import Any, Union

MAX_DEPTH = 64  # deeper than any sane property tree; stops runaway recursion early
# A caller's messageId: Segment's limit, so an id that works there works here too.
# The API documents UUIDs (36 characters); it names no limit of its own.
MAX_MESSAGE_ID_LENGTH = 100

Id = Union[str, int]


def convert(value: Any) -> Any:
    """json's ``default`` hook: the types whose JSON meaning is unambiguous."""
    if isinstance(value, _dt.datetime):
        return format_datetime(value)
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError("non-finite Decimal")
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:  # mixed types: keep them, order is meaningless anyway
            return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def format_datetime(value: _dt.datetime) -> str:
    """Aware datetimes become UTC with milliseconds and ``Z``; naive ones keep their
    wall-clock time without an offset (we cannot know their zone)."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.isoformat(timespec="milliseconds")
    utc = value.astimezone(_dt.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# -- the arguments -------------------------------------------------------------------


def track_args(
    event: str, properties: Mapping[str, Any] | None, user_id: Id | None, group_id: Id | None
) -> tuple[str | None, str | None, Any]:
    if not isinstance(event, str) or not event.strip():
        raise _bad_name(event)
    uid = optional_id("user_id", user_id)
    gid = optional_id("group_id", group_id)
    if uid is None and gid is None:
        raise ValueError("track() needs user_id or group_id: Klime has no anonymous events")
    return uid, gid, mapping("properties", properties)


def group_args(
    group_id: Id, traits: Mapping[str, Any] | None, user_id: Id | None
) -> tuple[str, str | None, Any]:
    gid = required_id("group_id", group_id)
    return gid, optional_id("user_id", user_id), mapping("traits", traits)


def message_id(value: object, name: str = "message_id") -> str:
    """A caller's message id: the server's de-duplication key, so it must be text the
    API can store and compare. The importer checks a file's ids with this too."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if len(value) > MAX_MESSAGE_ID_LENGTH:
        raise ValueError(
            f"{name} must be at most {MAX_MESSAGE_ID_LENGTH} characters, got {len(value)}"
        )
    problem = _check_text(value, name)
    if problem is not None:
        raise problem
    return value


def _bad_name(event: object) -> Exception:
    if not isinstance(event, str):
        return TypeError(f"event must be a non-empty string, got {type(event).__name__}")
    return ValueError("event must be a non-empty string")


def required_id(name: str, value: Id | None) -> str:
    result = optional_id(name, value)
    if result is None:
        raise ValueError(f"{name} is required")
    return result


def optional_id(name: str, value: Id | None) -> str | None:
    """Ids are non-empty strings; ints (database primary keys) are accepted as text."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{name} must be a non-empty string")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # Python 3.11+ refuses ints of more than 4300 digits
            raise ValueError(f"{name} is an int too large to send as text") from None
    raise TypeError(f"{name} must be a string or int, got {type(value).__name__}")


def mapping(name: str, value: Mapping[str, Any] | None) -> Any:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping (dict) or None, got {type(value).__name__}")
    return value


# -- the slow path: only after the fast encode failed ---------------------------------


def too_deep(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return any(too_deep(item, depth + 1) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(too_deep(item, depth + 1) for item in value)
    return False


def diagnose(body: dict[str, Any], exc: BaseException) -> Exception:
    """Walk the event to name the argument or key path that json could not encode."""
    fields = (("event", "event"), ("userId", "user_id"), ("groupId", "group_id"))
    for field, argument in (*fields, ("messageId", "message_id")):
        value = body.get(field)
        problem = _check_text(value, argument) if isinstance(value, str) else None
        if problem is not None:
            return problem
    for field in ("properties", "traits"):
        if field in body:
            problem = _find_problem(body[field], field, 0, set())
            if problem is not None:
                return problem
    return ValueError(f"event cannot be encoded as JSON: {exc}")


def _find_problem(value: Any, path: str, depth: int, seen: set[int]) -> Exception | None:
    if depth > MAX_DEPTH:
        return ValueError(f"{path} is nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _check_text(value, path)
    if isinstance(value, int):
        return _check_int(value, path)
    if isinstance(value, float):
        return None if math.isfinite(value) else ValueError(f"{path} is {value}: not valid JSON")
    if isinstance(value, (Mapping, list, tuple)):
        return _find_in_container(value, path, depth, seen)
    try:
        converted = convert(value)
    except (TypeError, ValueError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        return kind(f"{path}: {type(value).__name__} cannot be sent as JSON ({exc})")
    return _find_problem(converted, path, depth + 1, seen)


def _find_in_container(value: Any, path: str, depth: int, seen: set[int]) -> Exception | None:
    if id(value) in seen:
        return ValueError(f"{path} contains itself (a reference cycle)")
    seen.add(id(value))
    try:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return TypeError(f"{path} has a key of type {type(key).__name__}")
                problem = _check_text(key, path) if isinstance(key, str) else None
                if isinstance(key, float) and not math.isfinite(key):
                    problem = ValueError(f"{path} has a key {key}: not valid JSON")
                problem = problem or _find_problem(item, f"{path}.{key}", depth + 1, seen)
                if problem is not None:
                    return problem
        else:
            for index, item in enumerate(value):
                problem = _find_problem(item, f"{path}[{index}]", depth + 1, seen)
                if problem is not None:
                    return problem
        return None
    finally:
        seen.discard(id(value))


def _check_text(value: str, path: str) -> Exception | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return ValueError(f"{path} contains a lone surrogate: not valid UTF-8")
    return None


def _check_int(value: int, path: str) -> Exception | None:
    try:
        str(value)
    except ValueError:  # Python 3.11+ refuses ints of more than 4300 digits
        return ValueError(f"{path} is an int too large to encode")
    return None
