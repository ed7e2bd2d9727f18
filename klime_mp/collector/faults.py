"""Deterministic fault injection for the collector's batch endpoint.

Reliability tests need a server that misbehaves on purpose, and the same way on every
run: a plan names a rate for each kind of fault, and one seeded random stream picks
at most one fault per request.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

# Names used as keys of ``CollectorStats.faults_injected`` and in log lines.
ERROR = "error"
RATE_LIMIT = "rate_limit"
DROP = "drop"
DROP_AFTER_STORE = "drop_after_store"
GARBAGE = "garbage"
DELAY = "delay"
TOO_LARGE = "too_large"  # a body over ``max_body_bytes``, answered 413
POISON = "poison"  # a batch holding the ``poison_event``, answered 400 as a whole

_RATE_FIELDS = (
    ("error_rate", ERROR),
    ("rate_limit_rate", RATE_LIMIT),
    ("drop_rate", DROP),
    ("drop_after_store_rate", DROP_AFTER_STORE),
    ("garbage_rate", GARBAGE),
)


@dataclass(frozen=True)
class FaultPlan:
    """How often the collector misbehaves on ``POST /v1/batch``.

    Each rate is a probability in [0, 1]. One uniform draw per request is compared
    against the rates stacked in field order, so at most one fault hits a request and
    a rate of 1.0 makes every request fail the same way.

    ``delay`` holds the answer of a share ``delay_rate`` of requests (all of them by
    default), whatever else happens to them: a slow server. ``retry_after`` is sent
    verbatim with each 429, or, with ``retry_after_as_date``, as the HTTP date that many
    seconds after the answer (RFC 9110 allows both forms).

    Two faults are not random but about the data, for tests of a client that splits a
    refused batch: ``max_body_bytes`` answers 413 to a larger body (a server, or a
    proxy, that takes less than the API's 10 MB), and ``poison_event`` answers 400 to a
    whole batch that holds a track event of that name, without saying which event.
    """

    seed: int = 0
    error_rate: float = 0.0
    status: int = 503
    rate_limit_rate: float = 0.0
    retry_after: str = "1"
    drop_rate: float = 0.0
    drop_after_store_rate: float = 0.0
    garbage_rate: float = 0.0
    delay: float = 0.0
    delay_rate: float = 1.0
    retry_after_as_date: bool = False
    max_body_bytes: int | None = None
    poison_event: str | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes is not None and not (
            isinstance(self.max_body_bytes, int) and self.max_body_bytes > 0
        ):
            raise ValueError(
                f"max_body_bytes must be a positive number of bytes, got {self.max_body_bytes!r}"
            )
        if self.poison_event is not None and not (
            isinstance(self.poison_event, str) and self.poison_event
        ):
            raise ValueError(f"poison_event must be an event name, got {self.poison_event!r}")
        for name in (*(name for name, _kind in _RATE_FIELDS), "delay_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate!r}")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        if self.delay < 0:
            raise ValueError(f"delay must not be negative, got {self.delay!r}")
        if not self.retry_after or any(c in self.retry_after for c in "\r\n"):
            # The value goes verbatim into a response header.
            raise ValueError(
                f"retry_after must be a one-line header value, got {self.retry_after!r}"
            )
        if self.retry_after_as_date and _seconds(self.retry_after) is None:
            raise ValueError(
                f"retry_after must be a number of seconds to send it as a date, "
                f"got {self.retry_after!r}"
            )

    def retry_after_header(self) -> str:
        """The Retry-After value of one 429 answered now."""
        seconds = _seconds(self.retry_after) if self.retry_after_as_date else None
        if seconds is None:
            return self.retry_after
        return email.utils.formatdate(time.time() + seconds, usegmt=True)

    @property
    def injects_faults(self) -> bool:
        """True when any rate is non-zero (the delay is not a random fault)."""
        return any(getattr(self, name) > 0 for name, _kind in _RATE_FIELDS)


def _seconds(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


class Draw(NamedTuple):
    """What happens to one request: the plan in force, its fault (or None), and
    whether its answer is held back by ``plan.delay``."""

    plan: FaultPlan
    fault: str | None
    delayed: bool


class FaultDice:
    """Draws fault decisions from a plan; thread-safe and reproducible per seed.

    Replacing the plan restarts the random stream from the new plan's seed, so a test
    that assigns a plan knows exactly which requests will fail from then on.
    """

    def __init__(self, plan: FaultPlan) -> None:
        self._lock = threading.Lock()
        self._plan = plan
        self._rng = random.Random(plan.seed)

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan
            self._rng = random.Random(plan.seed)

    def draw(self) -> Draw:
        """Decide the fate of one request."""
        with self._lock:
            plan = self._plan
            # Each roll is taken only when its setting can make a difference, so plans
            # without a partial delay keep the fault sequence they always had.
            roll = self._rng.random() if plan.injects_faults else 1.0
            delayed = plan.delay > 0 and (
                plan.delay_rate >= 1.0 or self._rng.random() < plan.delay_rate
            )
        threshold = 0.0
        for name, kind in _RATE_FIELDS:
            threshold += getattr(plan, name)
            if roll < threshold:
                return Draw(plan, kind, delayed)
        return Draw(plan, None, delayed)
