"""Building and serializing one event.

Everything here runs in the caller's thread, so it is kept cheap: one dict, one
``json`` encode. Bad input raises at the call site with the argument named; values
whose meaning is clear (datetime, Decimal, UUID, Enum, set...) are converted (the
rules and the conversions are ``values``'s, this module encodes). The
encoded bytes are what the sender later splices into the batch body, so each event is
serialized exactly once and a retried batch is byte-identical.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Callable

from klime_mp import values
from klime_mp._version import __version__
from klime_mp.errors import EventTooLargeError
from klime_mp.message_ids import new_message_id
from klime_mp.values import MAX_DEPTH
from klime_mp.wire import MAX_EVENT_BYTES

# Re-exported: the argument type and the datetime format are part of what events offers.
Id = values.Id
format_datetime = values.format_datetime

LIBRARY_NAME = "klime_mp"

# Shared by every event: json never mutates it, and building it once saves a dict per call.
_CONTEXT = {"library": {"name": LIBRARY_NAME, "version": __version__}}


def _make_encoder() -> Callable[[Any], str]:
    """Compact JSON, NaN refused, ``values.convert`` for the rest.

    ``JSONEncoder.encode`` builds a new C encoder on every call; building it once saves
    about a microsecond per event. It runs without cycle markers: a cycle ends in a
    RecursionError, which ``serialize`` catches and ``values.diagnose`` names."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]  # private, documented in CPython's json
    if make is None:  # no C accelerator (PyPy...): the public path
        return json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=values.convert
        ).encode
    chunks = make(
        None, values.convert, json.encoder.encode_basestring, None, ":", ",", False, False, False
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
    message_id: str | None = None,
) -> dict[str, Any]:
    uid, gid, props = values.track_args(event, properties, user_id, group_id)
    stamp = timestamp_now() if timestamp is None else timestamp
    return _track_body(_id_for_dict(message_id), stamp, event, uid, gid, props)


def build_identify(
    user_id: Id,
    traits: Mapping[str, Any] | None,
    timestamp: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    uid, props = values.required_id("user_id", user_id), values.mapping("traits", traits)
    stamp = timestamp_now() if timestamp is None else timestamp
    return _identify_body(_id_for_dict(message_id), stamp, uid, props)


def build_group(
    group_id: Id,
    traits: Mapping[str, Any] | None,
    user_id: Id | None,
    timestamp: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    gid, uid, props = values.group_args(group_id, traits, user_id)
    stamp = timestamp_now() if timestamp is None else timestamp
    return _group_body(_id_for_dict(message_id), stamp, gid, uid, props)


def serialize(body: dict[str, Any]) -> bytes:
    """Encode one event; on failure, find the offending key and name it."""
    try:
        data = _encode(body).encode("utf-8")
    except _ENCODE_ERRORS as exc:
        raise values.diagnose(body, exc) from None
    # How deep json lets us go depends on the Python version (3.12+ goes much deeper
    # than 3.11, whose json then refuses the whole batch), so the limit is ours. The
    # bracket count bounds the depth at C speed; only an event with more than
    # MAX_DEPTH brackets is walked.
    if data.count(b"{") + data.count(b"[") > MAX_DEPTH and values.too_deep(body, -1):
        raise values.diagnose(body, ValueError("nested too deeply"))
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
    message_id: str | None = None,
) -> bytes:
    # The common shape is checked inline: four validation calls cost more than the
    # checks themselves, several times more in a web worker that idled between requests
    # (cold caches: 42 -> 27 us a call on our 2-core VM). Anything else, and every
    # error message, goes through values.track_args.
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
        uid, gid, props = values.track_args(event, properties, user_id, group_id)
    message_id = new_message_id() if message_id is None else _id_for_text(message_id)
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
        raise values.diagnose(body, exc) from None


def encode_identify(
    user_id: Id,
    traits: Mapping[str, Any] | None,
    timestamp: str | None = None,
    message_id: str | None = None,
) -> bytes:
    uid, props = values.required_id("user_id", user_id), values.mapping("traits", traits)
    message_id = new_message_id() if message_id is None else _id_for_text(message_id)
    if timestamp is None:
        timestamp = timestamp_now()
    head = f'{{"type":"identify","messageId":"{message_id}","timestamp":"{timestamp}","userId":'
    try:
        return _splice(head + _quote(uid) + ',"traits":', props)
    except _ENCODE_ERRORS as exc:
        raise values.diagnose(_identify_body(message_id, timestamp, uid, props), exc) from None


def encode_group(
    group_id: Id,
    traits: Mapping[str, Any] | None,
    user_id: Id | None,
    timestamp: str | None = None,
    message_id: str | None = None,
) -> bytes:
    gid, uid, props = values.group_args(group_id, traits, user_id)
    message_id = new_message_id() if message_id is None else _id_for_text(message_id)
    if timestamp is None:
        timestamp = timestamp_now()
    head = f'{{"type":"group","messageId":"{message_id}","timestamp":"{timestamp}"'
    if uid is not None:
        head += ',"userId":' + _quote(uid)
    try:
        return _splice(head + ',"groupId":' + _quote(gid) + ',"traits":', props)
    except _ENCODE_ERRORS as exc:
        raise values.diagnose(_group_body(message_id, timestamp, gid, uid, props), exc) from None


def _splice(head: str, payload: Any) -> bytes:
    """``head``, the JSON of ``payload`` and the context; raises json's errors."""
    text = _encode(payload)
    # The depth limit of serialize(), with one more filter in front: JSON nested more
    # than MAX_DEPTH levels has at least two brackets per level, so a short text (most
    # properties) is never counted, let alone walked.
    if (
        len(text) > 2 * MAX_DEPTH
        and text.count("{") + text.count("[") > MAX_DEPTH
        and values.too_deep(payload, 0)
    ):
        raise ValueError("nested too deeply")
    return (head + text + _CONTEXT_TAIL).encode("utf-8")


def _id_for_dict(message_id: str | None) -> str:
    return new_message_id() if message_id is None else values.message_id(message_id)


def _id_for_text(message_id: str) -> str:
    """A caller's id, checked and escaped for the place between the quotes of the
    encoders' text (a fresh UUID needs no escaping, so only this path pays for it)."""
    return _quote(values.message_id(message_id))[1:-1]


# -- the dict of each kind of event ------------------------------------------------


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
