"""Delivering one batch: which answers count as delivered, refused or worth retrying,
and how long to wait before the next attempt (backoff, jitter, Retry-After).

The HTTP exchange itself is ``transport``'s; this module only judges its ``Attempt``s.
It returns values (``Delivery``) instead of raising, so the sender thread has one place
to count and report a failure and never dies of one.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from klime_mp.delivery.outage import OutageLog
from klime_mp.delivery.transport import Attempt, Transport
from klime_mp.errors import DeliveryError
from klime_mp.options import Options
from klime_mp.responses import BatchResponse, ValidationError

MAX_BACKOFF_S = 16.0  # the official SDK's cap
MAX_RETRY_AFTER_S = 60.0  # a server asking for longer is not obeyed beyond this
# 407: the proxy refuses our credentials; resending them cannot help either.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 407, 410, 413, 414, 415, 422})
# Answers about the request or the set-up (a wrong key, a misrouted deploy, a proxy path),
# not about the events: with a spool the events wait on disk and the client probes with
# its backoff until the set-up is fixed. Without one they are reported (see
# docs/reliability.md, "Which answer drops what").
SETUP_STATUSES = frozenset({401, 403, 404, 405, 407, 410, 414, 415})

Deadline = Callable[[], Optional[float]]
_HOUSEKEEPING_S = 1.0  # a backoff wait wakes this often for ``while_waiting``


@dataclass(frozen=True)
class Delivery:
    """The outcome of sending one batch, after any retries."""

    response: BatchResponse | None  # set when the server took the batch (HTTP 200)
    error: DeliveryError | None  # set when it failed for good
    retries: int


# Why a batch was not delivered (``DeliveryError.reason``; also keys of ``Stats.dropped``).
REJECTED = "rejected"  # the server refused it (400, 401...): resending cannot help
RETRIES_EXHAUSTED = "retries_exhausted"
SHUTDOWN_TIMEOUT = "shutdown_timeout"  # the shutdown deadline came first
# The deadline came while the batch's request was out and its answer had not come back
# (or right after such an attempt): the server may well have stored it. Apart from
# SHUTDOWN_TIMEOUT so that nobody re-sends or alarms on events that probably arrived.
ANSWER_UNKNOWN = "answer_unknown"
DEADLINE_REASONS = frozenset({SHUTDOWN_TIMEOUT, ANSWER_UNKNOWN})
# A bug (ours or a library's) raised while sending: counted under its own name, so it
# is never mistaken for an outage or a deadline.
INTERNAL_ERROR = "internal_error"


class Deliverer:
    """Sends batches through one ``Transport``; one per client per process, used by one
    sending thread at a time.

    One outage, one backoff: the consecutive failures and the time of the next allowed
    attempt belong to the process, not to a batch. When the server is down, the batch
    after a failed one waits for the same backoff instead of starting a window of its
    own, so an outage costs one probe at a time whatever the queue holds, and a
    ``Retry-After`` pauses the whole client. ``retry_max_attempts`` keeps the official
    meaning, attempts per batch: a batch is given up after that many failed attempts
    of its own (without a spool; with one it waits on disk instead, ``durable``)."""

    def __init__(
        self,
        options: Options,
        transport: Transport,
        interrupt: threading.Event,
        *,
        durable: bool = False,
        while_waiting: Callable[[], None] = lambda: None,
        outage: OutageLog | None = None,
    ) -> None:
        self._options = options
        self._transport = transport
        self._interrupt = interrupt  # set by shutdown: cut short any backoff wait
        self._durable = durable
        # Housekeeping a long backoff must not hold up (the sender reports parked losses).
        self._while_waiting = while_waiting
        self._failures = 0  # consecutive failed attempts, whichever batch made them
        self._resume_at = 0.0  # monotonic time before which no attempt is made
        self._outage = outage  # logs an outage once, counts failed attempts as they fail
        self._setup_status: int | None = None  # a set-up answer pausing delivery (spool)

    @property
    def in_outage(self) -> bool:
        """The last attempt failed: the server is down, failing or pausing us."""
        return self._failures > 0

    def send(self, body: bytes, deadline: Deadline, events: int = 0) -> Delivery:
        """POST ``body`` (``events`` in it) until it is taken, refused, out of attempts,
        or ``deadline()`` passes before the next attempt is due."""
        attempts = 0
        last: Attempt | None = None
        while True:
            if not self._wait_turn(deadline):
                return Delivery(None, self._deadline_error(last), max(attempts - 1, 0))
            timeout = _attempt_timeout(self._options, deadline())
            attempt = last = self._transport.post(body, timeout, events)
            attempts += 1
            if self._outage is not None:
                if attempt.status == 200:
                    self._outage.delivered(events)
                else:
                    self._outage.attempt_failed(attempt)
            delivery = self._judge(attempt, attempts - 1)
            if delivery is not None:
                self._failures, self._resume_at = 0, 0.0
                self._setup_status = None
                return delivery
            self._failures += 1
            delay = self._delay(min(self._failures, 32), attempt.retry_after)
            self._resume_at = time.monotonic() + delay
            if attempts >= self._options.retry_max_attempts and not self._durable:
                return Delivery(None, _final_error(attempt, attempts), attempts - 1)

    def _deadline_error(self, last: Attempt | None) -> DeliveryError:
        """Why a batch was given up at a deadline, with the cause of the failures."""
        status = None if last is None else last.status
        if last is not None and last.answer_unknown:
            message = f"sent, answer unknown (the server may have them): {last.cause}"
            return DeliveryError(message, ANSWER_UNKNOWN, status)
        cause = last.cause if last is not None else None
        if cause is None and self._outage is not None:
            cause = self._outage.last_cause  # the outage's, seen by an earlier batch
        message = "gave up at the shutdown deadline"
        return DeliveryError(
            f"{message}; last error: {cause}" if cause else message, SHUTDOWN_TIMEOUT, status
        )

    def _judge(self, attempt: Attempt, retries: int) -> Delivery | None:
        """A final Delivery, or None when the attempt should be retried."""
        if attempt.status == 200:
            return Delivery(self._parse(attempt.content), None, retries)
        if attempt.status in SETUP_STATUSES and self._durable:
            self._pause_for_setup(attempt)
            return None
        if attempt.status in PERMANENT_STATUSES:
            message = f"rejected with HTTP {attempt.status}: {_excerpt(attempt.content)}"
            return Delivery(None, DeliveryError(message, REJECTED, attempt.status), retries)
        return None

    def _pause_for_setup(self, attempt: Attempt) -> None:
        # One loud line per episode (a status that changes starts a new one), not one per
        # probe: the events are safe on disk, the operator has a set-up to fix.
        if attempt.status != self._setup_status:
            self._setup_status = attempt.status
            self._options.logger.error(
                "Klime: the server answered HTTP %s (%s): an answer about the request or "
                "the set-up (write key, endpoint, proxy), not the events. They stay in the "
                "spool; delivery is paused and retried with backoff until it is fixed.",
                attempt.status,
                _excerpt(attempt.content),
            )

    def _parse(self, content: bytes) -> BatchResponse:
        try:
            data = json.loads(content)
            return _response_from(data)
        except (ValueError, TypeError, AttributeError):
            # The status is the authority: the server took the batch. A body we cannot
            # read is logged, not retried (a resend would only duplicate receipts).
            self._options.logger.warning(
                "Klime answered 200 with an unreadable body: %s", _excerpt(content)
            )
            return BatchResponse(status="ok", accepted=0, failed=0)

    # -- waiting between attempts ----------------------------------------------------

    def _delay(self, attempt_number: int, retry_after: str | None) -> float:
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return min(asked, MAX_RETRY_AFTER_S)
        base = min(self._options.retry_initial_delay * 2.0 ** (attempt_number - 1), MAX_BACKOFF_S)
        # "Equal jitter": workers that failed together do not retry together.
        return base / 2 + random.uniform(0, base / 2)

    def _wait_turn(self, deadline: Deadline) -> bool:
        """Wait until the backoff allows the next attempt; False when the (possibly
        newly set) deadline would pass first.

        Shutdown sets a deadline and then the interrupt, so a wait that began before
        shutdown wakes up, sees the deadline, and gives up instead of outliving it."""
        while True:
            limit = deadline()
            if limit is not None and self._resume_at > limit:
                return False
            remaining = self._resume_at - time.monotonic()
            if remaining <= 0:
                return True
            if self._interrupt.wait(min(remaining, _HOUSEKEEPING_S)):
                self._interrupt.clear()
            self._while_waiting()


def _attempt_timeout(options: Options, deadline: float | None) -> float:
    timeout = options.timeout
    if deadline is not None:
        timeout = min(timeout, max(deadline - time.monotonic(), 0.001))
    return timeout


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


def _response_from(data: Any) -> BatchResponse:
    errors = data.get("errors") or None
    return BatchResponse(
        status=str(data.get("status", "ok")),
        accepted=int(data.get("accepted", 0)),
        failed=int(data.get("failed", 0)),
        errors=[
            ValidationError(
                int(e.get("index", -1)), str(e.get("message", "")), str(e.get("code", ""))
            )
            for e in errors
        ]
        if errors
        else None,
    )


def _final_error(attempt: Attempt, attempts: int) -> DeliveryError:
    reason = attempt.error if attempt.error is not None else f"HTTP {attempt.status}"
    message = f"failed after {attempts} attempts, last: {reason}"
    return DeliveryError(message, RETRIES_EXHAUSTED, attempt.status)


def _excerpt(content: bytes, limit: int = 200) -> str:
    return content[:limit].decode("utf-8", "replace")
