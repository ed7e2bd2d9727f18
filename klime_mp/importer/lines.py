"""The lines of an import file as events: JSON Lines in two shapes, or CSV.

Each line becomes the same event ``track``/``identify``/``group`` would build: the
checks and the encoding are ``events``'s, so the client and the importer refuse the
same things with the same words. What is added here is what a file needs: the shape
of a line, a required ``timestamp`` (an import sends past events), and a ``messageId``
that depends only on the line's content, so importing a file twice sends the same ids
and the server keeps each event once.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Union

from klime_mp import events, values
from klime_mp.before_send import screen
from klime_mp.errors import BeforeSendError, HeaderError, LineError
from klime_mp.options import BeforeSend
from klime_mp.timestamps import to_wire

# The namespace of derived messageIds. Changing it changes every derived id, and a
# re-import after an upgrade would then be counted twice: never change it.
IMPORT_NAMESPACE = uuid.UUID("53cca35d-7d0f-436e-9602-c8175a5a7ed9")

# JSON Lines: the wire format's keys, or the Python API's. ``context`` is accepted in
# the wire shape (a line exported from Klime or another SDK) and replaced by ours.
_WIRE = {"userId": "user_id", "groupId": "group_id", "messageId": "message_id"}
_COMMON = frozenset({"type", "event", "timestamp", "properties", "traits"})
WIRE_KEYS = _COMMON | {*_WIRE, "context"}
API_KEYS = _COMMON | set(_WIRE.values())

# CSV: these columns, plus ``properties.<name>`` / ``traits.<name>`` ones.
CSV_COLUMNS = frozenset({*API_KEYS, "message_id"})
_NESTED = ("properties.", "traits.")

_DECODE_ERRORS = (ValueError, TypeError, RecursionError)
# Built once: json.dumps() with options builds a new encoder on every call.
_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_ENCODE_ERRORS = (ValueError, TypeError, RecursionError, UnicodeEncodeError)


class Event(NamedTuple):
    message_id: str
    data: bytes  # the encoded event, as the client would queue it


Fields = dict[str, Any]  # one line's fields, under the Python API's names
Parsed = Union[Fields, LineError]


# -- JSON Lines ------------------------------------------------------------------------


def jsonl_fields(raw: bytes) -> Fields | None:
    """The fields of one JSON line, under the Python API's names; None for a blank line.

    A line is in the wire shape when it has a wire-only key (``userId``, ``groupId``,
    ``messageId``, ``context``), else in the Python API's shape."""
    text = raw.decode("utf-8", "surrogateescape").strip()  # bad UTF-8: named when encoded
    if not text:
        return None
    try:
        line = json.loads(text)
    except _DECODE_ERRORS as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    if not isinstance(line, dict):
        raise LineError(f"a line must be a JSON object, got {type(line).__name__}")
    wire = any(key in line for key in (*_WIRE, "context"))
    if wire and any(key in line for key in _WIRE.values()):
        raise LineError("mixes wire keys (userId, ...) with Python keys (user_id, ...)")
    unknown = sorted(set(line) - (WIRE_KEYS if wire else API_KEYS))
    if unknown:
        shape = "the wire shape" if wire else "the Python API's shape"
        raise LineError(f"unknown key {', '.join(map(repr, unknown))} in {shape}")
    if wire:
        line.pop("context", None)
        return {str(_WIRE.get(key, key)): value for key, value in line.items()}
    return line


# -- CSV -------------------------------------------------------------------------------


def csv_rows(lines: Iterable[str]) -> Iterator[tuple[int, Parsed]]:
    """(line number, fields or error) per record; a record's number is its first line.

    Empty cells are absent values. ``properties.<name>`` cells are strings (a CSV cell
    has no type); a ``properties`` column holds a JSON object, for numbers and booleans,
    and the named columns are laid over it. The same for ``traits``."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise HeaderError(f"the CSV header cannot be read: {exc}") from None
    _check_header(header)
    start = reader.line_num + 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield start, _csv_fields(header, row)
            start = reader.line_num + 1
    except csv.Error as exc:  # an unterminated quote runs to the end of the file
        yield start, LineError(f"CSV: {exc}")


def _check_header(header: list[str]) -> None:
    unknown = [c for c in header if c not in CSV_COLUMNS and not c.startswith(_NESTED)]
    if unknown:
        raise HeaderError(
            f"unknown CSV column(s) {', '.join(map(repr, unknown))}; the columns are "
            f"{', '.join(sorted(CSV_COLUMNS))}, properties.NAME and traits.NAME"
        )
    if "type" not in header:
        raise HeaderError("the CSV header has no 'type' column")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise HeaderError(f"CSV column(s) named twice: {', '.join(repeated)}")


def _csv_fields(header: list[str], row: list[str]) -> Parsed:
    if len(row) != len(header):
        return LineError(f"has {len(row)} cells, the header has {len(header)}")
    fields: Fields = {}
    for column, cell in zip(header, row):
        if cell == "":
            continue
        if column in ("properties", "traits"):
            try:
                fields[column] = {**json.loads(cell), **fields.get(column, {})}
            except _DECODE_ERRORS:
                return LineError(f"the {column} column must hold a JSON object")
        elif column.startswith(_NESTED):
            group, _, name = column.partition(".")
            fields.setdefault(group, {})[name] = cell
        else:
            fields[column] = cell
    return fields


# -- one line to one event -------------------------------------------------------------


def to_event(fields: Fields, before_send: BeforeSend | None = None) -> Event | None:
    """Validate and encode one line's fields as the client would; LineError if bad.

    With ``before_send``, the event is what the hook returned, and None when it dropped
    the event; a hook that fails makes the line a bad one (nothing of it is sent)."""
    try:
        body = _build(fields)
    except (ValueError, TypeError) as exc:
        raise LineError(str(exc)) from None
    message_id = fields.get("message_id")
    if message_id is None:
        try:
            message_id = derived_message_id(body)
        except _ENCODE_ERRORS:
            message_id = None  # serialize() below names what cannot be encoded
    else:
        try:
            values.message_id(message_id)  # the client's rule: one bound for both
        except (ValueError, TypeError) as exc:
            raise LineError(str(exc)) from None
    body["messageId"] = message_id
    try:
        data = events.serialize(body)
        if before_send is not None:
            kept = screen(before_send, data)
            if kept is None:
                return None
            # The hook may change the id too: the one sent is the one de-duplicated.
            data, message_id = kept, json.loads(kept)["messageId"]
        events.check_size(data)
    except (ValueError, TypeError, BeforeSendError) as exc:
        raise LineError(str(exc)) from None
    if message_id is None:  # cannot happen: what failed the id fails serialize()
        raise LineError("the event cannot be encoded as JSON")
    return Event(message_id, data)


def _build(fields: Fields) -> dict[str, Any]:
    kind, get = fields.get("type"), fields.get
    if kind not in ("track", "identify", "group"):
        raise LineError(f"type must be track, identify or group, got {kind!r}")
    stamp = get("timestamp")
    if stamp is None:
        raise LineError("timestamp is required: an import sends past events")
    stamp = to_wire(stamp)
    if kind == "track":
        _refuse(fields, "track", "traits")
        return events.build_track(
            get("event"),  # type: ignore[arg-type]  # a missing name is refused there, by name
            get("properties"),
            get("user_id"),
            get("group_id"),
            stamp,
        )
    if kind == "identify":
        _refuse(fields, "identify", "event", "properties", "group_id")
        return events.build_identify(get("user_id"), get("traits"), stamp)  # type: ignore[arg-type]  # None is refused there, by name
    _refuse(fields, "group", "event", "properties")
    return events.build_group(get("group_id"), get("traits"), get("user_id"), stamp)  # type: ignore[arg-type]  # as above


def _refuse(fields: Fields, kind: str, *names: str) -> None:
    present = [name for name in names if fields.get(name) is not None]
    if present:
        raise LineError(f"a {kind} event has no {', '.join(present)}")


def derived_message_id(body: dict[str, Any]) -> str:
    """uuid5(IMPORT_NAMESPACE, the event's fields as canonical JSON): sorted keys, no
    spaces, UTF-8, ids as text, timestamp as sent. The same event gives the same id,
    whichever shape or file it came from."""
    canonical = {k: v for k, v in body.items() if k not in ("messageId", "context")}
    return str(uuid.uuid5(IMPORT_NAMESPACE, _canonical(canonical)))
