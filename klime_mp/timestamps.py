"""An explicit event time (``timestamp=``): checked, and formatted as the API expects.

The API takes UTC ISO 8601 with milliseconds and ``Z``. A past event may carry its own
time (a backfill, an import); it must name its zone, because a naive time would be
read as UTC and shift every event of a server in another zone by hours without a
word. A time in the future is almost always a unit or zone mistake, so more than
``MAX_FUTURE`` ahead (clocks of two machines disagree by a little) is refused too.

Strings are parsed here rather than with ``datetime.fromisoformat``, which accepts a
``Z`` and fractions other than 3 or 6 digits only from Python 3.11 on: the same string
must mean the same instant on every supported Python.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from typing import Union

Timestamp = Union[_dt.datetime, str]

MAX_FUTURE = _dt.timedelta(minutes=5)

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)
_ACCEPTED = "a timezone-aware datetime or an ISO 8601 string with an offset or Z"


def to_wire(value: object, name: str = "timestamp") -> str:
    """``value`` as UTC ISO 8601 with milliseconds and ``Z``; ValueError/TypeError
    naming ``name`` when it is naive, unreadable, of the wrong type or in the future."""
    if isinstance(value, str):
        moment = parse(value, name)
    elif isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{name} is a naive datetime: give it a zone, "
                "e.g. datetime(..., tzinfo=timezone.utc)"
            )
        moment = value
    else:
        raise TypeError(f"{name} must be {_ACCEPTED}, got {type(value).__name__}")
    try:
        utc = moment.astimezone(_dt.timezone.utc)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        raise ValueError(f"{name} {value!r} is out of range in UTC") from None
    if utc - _dt.datetime.fromtimestamp(time.time(), _dt.timezone.utc) > MAX_FUTURE:
        raise ValueError(
            f"{name} {format_utc(utc)} is more than {_minutes(MAX_FUTURE)} minutes in the future"
        )
    return format_utc(utc)


def parse(text: str, name: str = "timestamp") -> _dt.datetime:
    """An ISO 8601 date-time with an offset (or ``Z``) as an aware datetime."""
    match = _ISO.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{name} {text!r} is not an ISO 8601 date-time with an offset or Z")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        offset = _dt.timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
        zone = _dt.timezone.utc if zulu else _dt.timezone(-offset if sign == "-" else offset)
        micros = int((fraction or "0")[:6].ljust(6, "0"))  # beyond microseconds: truncated
        return _dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micros, zone
        )
    except ValueError:  # month 13, February 30, an offset of 24 hours or more ...
        raise ValueError(f"{name} {text!r} is not a valid date-time") from None


def format_utc(moment: _dt.datetime) -> str:
    """An aware UTC datetime as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (years below 1000 padded,
    which ``strftime("%Y")`` does not do everywhere)."""
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def _minutes(delta: _dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)
