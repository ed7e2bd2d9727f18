"""Building, validating and serializing one event.

Everything here runs in the caller's thread, so it is kept cheap: one dict, one
``json`` encode. Bad input raises at the call site with the argument named; values
whose meaning is clear (datetime, Decimal, UUID, Enum, set...) are converted. The
encoded bytes are what the sender later splices into the batch body, so each event is
serialized exactly once and a retried batch is byte-identical.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import json
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any, Callable, Union

from klime_mp._version import __version__
from klime_mp.errors import EventTooLargeError
from klime_mp.message_ids import new_message_id
from klime_mp.wire import MAX_EVENT_BYTES

LIBRARY_NAME = "klime_mp"
MAX_DEPTH = 64  # deeper than any sane property tree; stops runaway recursion early

Id = Union[str, int]

# Shared by every event: json never mutates it, and building it once saves a dict per call.
_CONTEXT = {"library": {"name": LIBRARY_NAME, "version": __version__}}


def _convert(value: Any) -> Any:
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


def _make_encoder() -> Callable[[Any], str]:
    """Compact JSON, NaN refused, ``_convert`` for the rest.

    ``JSONEncoder.encode`` builds a new C encoder on every call; building it once saves
    about a microsecond per event. It runs without cycle markers: a cycle ends in a
    RecursionError, which ``serialize`` catches and ``_diagnose`` names."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]  # private, documented in CPython's json
    if make is None:  # no C accelerator (PyPy...): the public path
        return json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_convert
        ).encode
    chunks = make(
        None, _convert, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode(body: Any) -> str:
        return "".join(chunks(body, 0))

    return encode


_encode = _make_encoder()
_ENCODE_ERRORS = (TypeError, ValueError, RecursionError, UnicodeEncodeError)
# json's own escaper for one string (the C one when there is one), as _encode uses it.
_quote: Callable[[str], str] = json.encoder.encode_basestring
# Every event ends with the same context: encoded once, spliced after the properties.
_CONTEXT_TAIL = ',"context":' + _encode(_CONTEXT) + "}"


def format_datetime(value: _dt.datetime) -> str:
    """Aware datetimes become UTC with milliseconds and ``Z``; naive ones keep their
    wall-clock time without an offset (we cannot know their zone)."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.isoformat(timespec="milliseconds")
    utc = value.astimezone(_dt.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# The milliseconds and the zone of a timestamp, formatted once: "000Z" ... "999Z".
_MILLIS = [f"{millis:03d}Z" for millis in range(1000)]
_second_cache: tuple[int, str] = (-1, "")


def timestamp_now() -> str:
    """UTC ISO 8601 with milliseconds and ``Z``, as the API expects.

    The formatted second is cached (strftime is most of the cost and changes once a
    second) and the milliseconds come from a table: two lookups and one concatenation
    per call. (The cache tuple is swapped whole, so concurrent callers never see half
    of one.)"""
    global _second_cache
    second, millis = divmod(int(time.time() * 1000), 1000)
    cached, prefix = _second_cache
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second_cache = (second, prefix)
    return prefix + _MILLIS[millis]


# -- one event as a dict: the synchronous calls, and what on_error is shown -----------
#
# ``timestamp``, in these and the encoders below, is the wire text of an explicit event
# time (``timestamps.to_wire``, already checked); None, the common case, is the time of
# the call.


def build_track(
    event: str,
    properties: Mapping[str, Any] | None,
    user_id: Id | None,
    group_id: Id | None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    uid, gid, props = _track_args(event, properties, user_id, group_id)
    stamp = timestamp_now() if timestamp is None else timestamp
    return _track_body(new_message_id(), stamp, event, uid, gid, props)


def build_identify(
    user_id: Id, traits: Mapping[str, Any] | None, timestamp: str | None = None
) -> dict[str, Any]:
    uid, props = _required_id("user_id", user_id), _mapping("traits", traits)
    stamp = timestamp_now() if timestamp is None else timestamp
    return _identify_body(new_message_id(), stamp, uid, props)


def build_group(
    group_id: Id,
    traits: Mapping[str, Any] | None,
    user_id: Id | None,
    timestamp: str | None = None,
) -> dict[str, Any]:
    gid, uid, props = _group_args(group_id, traits, user_id)
    stamp = timestamp_now() if timestamp is None else timestamp
    return _group_body(new_message_id(), stamp, gid, uid, props)


def serialize(body: dict[str, Any]) -> bytes:
    """Encode one event; on failure, find the offending key and name it."""
    try:
        data = _encode(body).encode("utf-8")
    except _ENCODE_ERRORS as exc:
        raise _diagnose(body, exc) from None
    # How deep json lets us go depends on the Python version (3.12+ goes much deeper
    # than 3.11, whose json then refuses the whole batch), so the limit is ours. The
    # bracket count bounds the depth at C speed; only an event with more than
    # MAX_DEPTH brackets is walked.
    if data.count(b"{") + data.count(b"[") > MAX_DEPTH and _too_deep(body, -1):
        raise _diagnose(body, ValueError("nested too deeply"))
    return data


# -- one event straight to bytes: the queued calls --------------------------------------
#
# The same bytes as ``serialize(build_...(...))``, at about half the cost: the constant
# parts (keys, ``type``, ``context``) are text made once, the ids and the event name go
# through json's own string escaper, and json encodes only the properties. No dict is
# built unless the encode fails and the error needs naming.


def encode_track(
    event: str,
    properties: Mapping[str, Any] | None,
    user_id: Id | None,
    group_id: Id | None,
    timestamp: str | None = None,
) -> bytes:
    # The common shape is checked inline: four validation calls cost more than the
    # checks themselves, several times more in a web worker that idled between requests
    # (cold caches: 42 -> 27 us a call on our 2-core VM). Anything else, and every
    # error message, goes through _track_args.
    if (
        type(event) is str
        and (type(user_id) is str or (user_id is None and group_id is not None))
        and (type(group_id) is str or group_id is None)
        and (type(properties) is dict or properties is None)
        and event.strip()
        and (user_id is None or user_id.strip())
        and (group_id is None or group_id.strip())
    ):
        uid, gid, props = user_id, group_id, {} if properties is None else properties
    else:
        uid, gid, props = _track_args(event, properties, user_id, group_id)
    message_id = new_message_id()
    if timestamp is None:
        timestamp = timestamp_now()
    head = f'{{"type":"track","messageId":"{message_id}","timestamp":"{timestamp}","event":'
    head += _quote(event)
    if uid is not None:
        head += ',"userId":' + _quote(uid)
    if gid is not None:
        head += ',"groupId":' + _quote(gid)
    try:
        return _splice(head + ',"properties":', props)
    except _ENCODE_ERRORS as exc:
        body = _track_body(message_id, timestamp, event, uid, gid, props)
        raise _diagnose(body, exc) from None


def encode_identify(
    user_id: Id, traits: Mapping[str, Any] | None, timestamp: str | None = None
) -> bytes:
    uid, props = _required_id("user_id", user_id), _mapping("traits", traits)
    message_id = new_message_id()
    if timestamp is None:
        timestamp = timestamp_now()
    head = f'{{"type":"identify","messageId":"{message_id}","timestamp":"{timestamp}","userId":'
    try:
        return _splice(head + _quote(uid) + ',"traits":', props)
    except _ENCODE_ERRORS as exc:
        raise _diagnose(_identify_body(message_id, timestamp, uid, props), exc) from None


def encode_group(
    group_id: Id,
    traits: Mapping[str, Any] | None,
    user_id: Id | None,
    timestamp: str | None = None,
) -> bytes:
    gid, uid, props = _group_args(group_id, traits, user_id)
    message_id = new_message_id()
    if timestamp is None:
        timestamp = timestamp_now()
    head = f'{{"type":"group","messageId":"{message_id}","timestamp":"{timestamp}"'
    if uid is not None:
        head += ',"userId":' + _quote(uid)
    try:
        return _splice(head + ',"groupId":' + _quote(gid) + ',"traits":', props)
    except _ENCODE_ERRORS as exc:
        raise _diagnose(_group_body(message_id, timestamp, gid, uid, props), exc) from None


def _splice(head: str, payload: Any) -> bytes:
    """``head``, the JSON of ``payload`` and the context; raises json's errors."""
    text = _encode(payload)
    # The depth limit of serialize(), with one more filter in front: JSON nested more
    # than MAX_DEPTH levels has at least two brackets per level, so a short text (most
    # properties) is never counted, let alone walked.
    if (
        len(text) > 2 * MAX_DEPTH
        and text.count("{") + text.count("[") > MAX_DEPTH
        and _too_deep(payload, 0)
    ):
        raise ValueError("nested too deeply")
    return (head + text + _CONTEXT_TAIL).encode("utf-8")


# -- the arguments and the dict of each kind of event --------------------------------


def _track_args(
    event: str, properties: Mapping[str, Any] | None, user_id: Id | None, group_id: Id | None
) -> tuple[str | None, str | None, Any]:
    if not isinstance(event, str) or not event.strip():
        raise _bad_name(event)
    uid = _optional_id("user_id", user_id)
    gid = _optional_id("group_id", group_id)
    if uid is None and gid is None:
        raise ValueError("track() needs user_id or group_id: Klime has no anonymous events")
    return uid, gid, _mapping("properties", properties)


def _group_args(
    group_id: Id, traits: Mapping[str, Any] | None, user_id: Id | None
) -> tuple[str, str | None, Any]:
    gid = _required_id("group_id", group_id)
    return gid, _optional_id("user_id", user_id), _mapping("traits", traits)


def _track_body(
    message_id: str, timestamp: str, event: str, uid: str | None, gid: str | None, props: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "track",
        "messageId": message_id,
        "timestamp": timestamp,
        "event": event,
    }
    if uid is not None:
        body["userId"] = uid
    if gid is not None:
        body["groupId"] = gid
    body["properties"] = props
    body["context"] = _CONTEXT
    return body


def _identify_body(message_id: str, timestamp: str, uid: str, props: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": message_id,
        "timestamp": timestamp,
        "userId": uid,
        "traits": props,
        "context": _CONTEXT,
    }


def _group_body(
    message_id: str, timestamp: str, gid: str, uid: str | None, props: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "group", "messageId": message_id, "timestamp": timestamp}
    if uid is not None:  # the official SDK puts userId before groupId
        body["userId"] = uid
    body["groupId"] = gid
    body["traits"] = props
    body["context"] = _CONTEXT
    return body


def check_size(data: bytes) -> None:
    if len(data) > MAX_EVENT_BYTES:
        raise EventTooLargeError(len(data), MAX_EVENT_BYTES)


# -- validation helpers ------------------------------------------------------------


def _bad_name(event: object) -> Exception:
    if not isinstance(event, str):
        return TypeError(f"event must be a non-empty string, got {type(event).__name__}")
    return ValueError("event must be a non-empty string")


def _required_id(name: str, value: Id | None) -> str:
    result = _optional_id(name, value)
    if result is None:
        raise ValueError(f"{name} is required")
    return result


def _optional_id(name: str, value: Id | None) -> str | None:
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


def _mapping(name: str, value: Mapping[str, Any] | None) -> Any:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping (dict) or None, got {type(value).__name__}")
    return value


# -- the slow path: only after the fast encode failed ---------------------------------


def _too_deep(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return any(_too_deep(item, depth + 1) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_too_deep(item, depth + 1) for item in value)
    return False


def _diagnose(body: dict[str, Any], exc: BaseException) -> Exception:
    """Walk the event to name the argument or key path that json could not encode."""
    for field, argument in (("event", "event"), ("userId", "user_id"), ("groupId", "group_id")):
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
        converted = _convert(value)
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
