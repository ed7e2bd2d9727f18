"""POST /v1/batch over one pooled keep-alive session: retries, backoff, Retry-After.

The network seam returns values (``Delivery``) instead of raising, so the sender
thread has one place to count and report a failure and never dies of one.
"""

from __future__ import annotations

import email.utils
import encodings.idna  # noqa: F401  # see below
import json
import netrc  # noqa: F401  # see below
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import requests
import requests.adapters

from klime_mp._version import __version__
from klime_mp.options import Options
from klime_mp.responses import BatchResponse, ValidationError

# Why the idna import above: requests imports the codec lazily on the first hostname it
# handles; a freshly forked child whose first use happens in its sender thread can then
# fail with "LookupError: unknown encoding: idna" and lose every event. Import it now.
# Likewise netrc, which requests imports on the first request (get_netrc_auth): a fork
# while the parent's sender holds that import's module lock left the child's sender
# waiting for it forever (seen in tests/test_fork.py's stress test).

MAX_BACKOFF_S = 16.0  # the official SDK's cap
MAX_RETRY_AFTER_S = 60.0  # a server asking for longer is not obeyed beyond this
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 414, 415, 422})
USER_AGENT = f"klime_mp/{__version__}"

Deadline = Callable[[], Optional[float]]


@dataclass(frozen=True)
class Delivery:
    """The outcome of sending one batch, after any retries."""

    response: BatchResponse | None  # set when the server took the batch (HTTP 200)
    error: Exception | None  # set when it failed for good
    retries: int


# Why a batch was not delivered (``DeliveryError.reason``; also keys of ``Stats.dropped``).
REJECTED = "rejected"  # the server refused it (400, 401...): resending cannot help
RETRIES_EXHAUSTED = "retries_exhausted"
SHUTDOWN_TIMEOUT = "shutdown_timeout"  # the shutdown deadline came first


class DeliveryError(Exception):
    """A batch could not be delivered; ``status`` is the last HTTP status, if any."""

    def __init__(self, message: str, reason: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class _Attempt:
    status: int | None
    content: bytes = b""
    retry_after: str | None = None
    error: Exception | None = None


class Transport:
    """One per client per process. Only the sending thread (or a sync caller holding
    the worker's send lock) uses it, so the session is never used concurrently."""

    def __init__(self, options: Options, interrupt: threading.Event) -> None:
        self._options = options
        self._interrupt = interrupt  # set by shutdown: cut short any backoff sleep
        self._url = f"{options.endpoint}/v1/batch"
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {options.write_key}",
            "User-Agent": USER_AGENT,
        }
        self._session: requests.Session | None = None

    def send(self, body: bytes, deadline: Deadline) -> Delivery:
        """POST ``body`` until it is taken, fails for good, or ``deadline()`` passes."""
        retries = 0
        for attempt_number in range(1, self._options.retry_max_attempts + 1):
            attempt = self._post(body, deadline())
            delivery = self._judge(attempt, retries)
            if delivery is not None:
                return delivery
            if attempt_number == self._options.retry_max_attempts:
                break
            delay = self._delay(attempt_number, attempt.retry_after)
            if not self._sleep(delay, deadline):
                error = DeliveryError(
                    "gave up: the shutdown deadline", SHUTDOWN_TIMEOUT, attempt.status
                )
                return Delivery(None, error, retries)
            retries += 1
        return Delivery(None, _final_error(attempt, self._options.retry_max_attempts), retries)

    def close(self) -> None:
        """Close pooled connections (a normal close, in the owning process)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def abandon(self) -> None:
        """After fork, in the child: close this process's copies of the parent's idle
        pooled sockets. close() only releases this process's file descriptor;
        shutdown() would end the parent's connection too. Session.close() is not used:
        it takes urllib3's pool locks, which a parent thread may have held at the fork
        and which then stay held forever in the child. So the pools are read directly,
        without locks (nothing else runs on them here). A socket the parent had checked
        out mid-request is not in a pool: it is left alone, never used."""
        session, self._session = self._session, None
        if session is None:
            return
        for adapter in list(session.adapters.values()):
            pools = getattr(getattr(adapter, "poolmanager", None), "pools", None)
            for pool in list(getattr(pools, "_container", {}).values()):
                idle = getattr(getattr(pool, "pool", None), "queue", None) or ()
                for connection in list(idle):
                    sock = getattr(connection, "sock", None)
                    if sock is not None:
                        sock.close()

    # -- one attempt -----------------------------------------------------------------

    def _post(self, body: bytes, deadline: float | None) -> _Attempt:
        timeout = self._options.timeout
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), 0.001))
        try:
            reply = self._get_session().post(
                self._url, data=body, headers=self._headers, timeout=timeout
            )
            content = reply.content
        except requests.RequestException as exc:
            return _Attempt(status=None, error=exc)
        return _Attempt(reply.status_code, content, reply.headers.get("Retry-After"))

    def _get_session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()  # trust_env: proxy variables are honoured
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._session = session
        return self._session

    def _judge(self, attempt: _Attempt, retries: int) -> Delivery | None:
        """A final Delivery, or None when the attempt should be retried."""
        if attempt.status == 200:
            return Delivery(self._parse(attempt.content), None, retries)
        if attempt.status in PERMANENT_STATUSES:
            message = f"rejected with HTTP {attempt.status}: {_excerpt(attempt.content)}"
            return Delivery(None, DeliveryError(message, REJECTED, attempt.status), retries)
        return None

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

    def _sleep(self, delay: float, deadline: Deadline) -> bool:
        """Wait ``delay``; False when the (possibly newly set) deadline would pass first.

        Shutdown sets a deadline and then the interrupt, so a backoff that began before
        shutdown wakes up, sees the deadline, and gives up instead of outliving it."""
        end = time.monotonic() + delay
        while True:
            limit = deadline()
            if limit is not None and end > limit:
                return False
            remaining = end - time.monotonic()
            if remaining <= 0:
                return True
            if self._interrupt.wait(remaining):
                self._interrupt.clear()


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


def _final_error(attempt: _Attempt, attempts: int) -> DeliveryError:
    if attempt.error is not None:
        reason = f"{type(attempt.error).__name__}: {attempt.error}"
    else:
        reason = f"HTTP {attempt.status}"
    message = f"failed after {attempts} attempts, last: {reason}"
    return DeliveryError(message, RETRIES_EXHAUSTED, attempt.status)


def _excerpt(content: bytes, limit: int = 200) -> str:
    return content[:limit].decode("utf-8", "replace")
