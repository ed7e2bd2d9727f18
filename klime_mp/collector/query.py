"""What ``GET /v1/events`` may ask for: a page of stored events, narrowed by filters.

Kept apart from the store so the query string's rules (names, types, errors) are in
one place, and the store only turns an ``EventQuery`` into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from .validation import EVENT_TYPES, instant

DEFAULT_PAGE = 100
MAX_PAGE = 1000
LATEST_RUN = "latest"
# Query parameter -> events column, for the filters that match a value exactly.
EXACT_FILTERS = {"event": "event", "type": "type", "user_id": "user_id", "group_id": "group_id"}


class QueryError(ValueError):
    """A query string the events endpoint cannot answer (400)."""


@dataclass(frozen=True)
class EventQuery:
    """One page of stored events: ids above ``after``, oldest first, at most ``limit``.

    ``exact`` holds (column, value) pairs; ``since`` (inclusive) and ``until``
    (exclusive) bound the event's own timestamp, in seconds since the epoch; ``run``
    is a run number, ``LATEST_RUN``, or None for every run.
    """

    after: int = 0
    limit: int = DEFAULT_PAGE
    exact: tuple[tuple[str, str], ...] = ()
    since: float | None = None
    until: float | None = None
    run: int | str | None = None


def parse_query(query: str) -> EventQuery:
    """The ``EventQuery`` of a query string; ``QueryError`` names what is wrong."""
    params = {name: values[-1] for name, values in parse_qs(query).items()}
    unknown = set(params) - {"after", "limit", "since", "until", "run", *EXACT_FILTERS}
    if unknown:
        raise QueryError(f"unknown parameter: {', '.join(sorted(unknown))}")
    after = _integer(params, "after", 0, minimum=0)
    limit = min(_integer(params, "limit", DEFAULT_PAGE, minimum=1), MAX_PAGE)
    if "type" in params and params["type"] not in EVENT_TYPES:
        raise QueryError(f"type must be one of {', '.join(sorted(EVENT_TYPES))}")
    exact = tuple((EXACT_FILTERS[name], params[name]) for name in EXACT_FILTERS if name in params)
    run: int | str | None = params.get("run")
    if run is not None and run != LATEST_RUN:
        run = _integer(params, "run", 0, minimum=0)
    return EventQuery(after, limit, exact, _time(params, "since"), _time(params, "until"), run)


def _integer(params: dict[str, str], name: str, default: int, minimum: int) -> int:
    try:
        value = int(params.get(name, default))
    except ValueError:
        raise QueryError(f"{name} must be an integer") from None
    if value < minimum:
        raise QueryError(f"{name} must be at least {minimum}")
    return value


def _time(params: dict[str, str], name: str) -> float | None:
    if name not in params:
        return None
    text = params[name]
    # An unencoded "+" of an offset arrives as a space: read it back as the "+".
    moment = instant(text[:16] + text[16:].replace(" ", "+"))
    if moment is None:
        raise QueryError(f"{name} must be an ISO 8601 date-time, such as 2025-03-01T12:00:00Z")
    return moment
