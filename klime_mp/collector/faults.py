"""Deterministic fault injection for the collector's batch endpoint.

Reliability tests need a server that misbehaves on purpose, and the same way on every
run: a plan names a rate for each kind of fault, and one seeded random stream picks
at most one fault per request.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

# Names used as keys of ``CollectorStats.faults_injected`` and in log lines.
ERROR = "error"
RATE_LIMIT = "rate_limit"
DROP = "drop"
DROP_AFTER_STORE = "drop_after_store"
GARBAGE = "garbage"
DELAY = "delay"

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

    def __post_init__(self) -> None:
        for name, _kind in _RATE_FIELDS:
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

    @property
    def injects_faults(self) -> bool:
        """True when any rate is non-zero (the delay is not a random fault)."""
        return any(getattr(self, name) > 0 for name, _kind in _RATE_FIELDS)


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

    def draw(self) -> tuple[FaultPlan, str | None]:
        """Return the plan in force and the fault kind for one request (or None)."""
        with self._lock:
            plan = self._plan
            if not plan.injects_faults:
                return plan, None
            roll = self._rng.random()
        threshold = 0.0
        for name, kind in _RATE_FIELDS:
            threshold += getattr(plan, name)
            if roll < threshold:
                return plan, kind
        return plan, None
