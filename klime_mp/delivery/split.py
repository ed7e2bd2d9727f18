"""A batch the server refuses as a whole because of what is in it: cut it in halves and
send each half again, down to the events it refuses alone.

Two answers are about the data of the whole batch: 413 (the body is too large for this
server, which may allow less than the API's 10 MB) and 400 (something in it is bad, and
the server does not say which event). Dropping the batch would lose the good events with
the bad one. Halving finds a bad event in a batch of ``n`` with about ``2 * log2(n)``
extra requests (100 events: 14); the halves keep their events' message ids, so nothing
the server already stored is stored twice. ``MAX_SPLIT_REQUESTS`` bounds the extra
requests of one batch: past it, a part still refused is refused whole.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator
from typing import Callable

from klime_mp.delivery.deliverer import REJECTED, Delivery
from klime_mp.errors import DeliveryError
from klime_mp.responses import BatchResponse, ValidationError

SPLIT_STATUSES = frozenset({400, 413})
# Enough to isolate two bad events in a batch of 100 (14 requests each) or to cut it
# into 16 parts for a server that takes a sixteenth of our bodies (30); a server that
# refuses everything costs at most this many requests per batch, not 2n - 1.
MAX_SPLIT_REQUESTS = 40

Post = Callable[[list[bytes]], Delivery]
Part = tuple[list[bytes], Delivery]


class Splitter:
    """Sends batches through ``post`` and halves those refused for their data. One per
    sender; it only remembers which statuses it has already said it splits for."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._told: set[int] = set()

    def parts(self, post: Post, batch: list[bytes]) -> Iterator[Part]:
        """(part, its delivery) for consecutive parts of ``batch``, in order, each
        settled before the next one is sent; lazy, so a caller that stops (an outage,
        a deadline) stops the sending too. One part, the batch, unless it was split."""
        todo = [batch]
        extra = 0
        while todo:
            part = todo.pop()
            delivery = post(part)
            status = _split_status(delivery)
            if status is not None and len(part) > 1 and extra + 2 <= MAX_SPLIT_REQUESTS:
                self._tell(status, delivery, len(part))
                half = len(part) // 2
                todo += [part[half:], part[:half]]  # the first half is sent first
                extra += 2
                continue
            if status is not None and len(part) < len(batch):
                delivery = _alone(delivery, len(part), len(batch))
            yield part, delivery

    def whole(self, post: Post, batch: list[bytes]) -> Delivery:
        """The batch's outcome in one piece, for a caller that settles a batch as a whole
        (the spool's orphans, the importer): the parts' answers merged into one 200, with
        a refused part's events among its errors, by their index in ``batch``. A part not
        settled (an outage, a deadline) leaves the whole batch unsettled: sent again later
        with the same message ids, so the server stores each event once."""
        parts = self.parts(post, batch)
        first = next(parts)
        if len(first[0]) == len(batch):
            return first[1]
        merged = _Merge()
        for part, delivery in itertools.chain([first], parts):
            if delivery.response is None and not _refused(delivery):
                return Delivery(None, delivery.error, merged.retries + delivery.retries)
            merged.add(len(part), delivery)
        return merged.delivery()

    def _tell(self, status: int, delivery: Delivery, events: int) -> None:
        if status in self._told:
            return
        self._told.add(status)
        self._logger.warning(
            "Klime: the server refused a batch of %d events (%s); sending it again in "
            "halves, so that only the events it refuses alone are lost (said once)",
            events,
            delivery.error,
        )


class _Merge:
    """The parts of a split batch added up into one answer."""

    def __init__(self) -> None:
        self.offset = self.accepted = self.failed = self.retries = 0
        self.errors: list[ValidationError] = []
        self.refusal: DeliveryError | None = None
        self.answered = False

    def add(self, size: int, delivery: Delivery) -> None:
        self.retries += delivery.retries
        response = delivery.response
        if response is None:
            error = delivery.error
            assert error is not None  # a Delivery holds a response or an error
            self.refusal = self.refusal or error
            code = f"http_{error.status}"
            self.errors += [ValidationError(self.offset + i, str(error), code) for i in range(size)]
            self.failed += size
        else:
            self.answered = True
            failed = min(max(response.failed, 0), size)
            given = {e.index: e for e in response.errors or () if 0 <= e.index < size}
            if len(given) != failed:  # a count without indices: the part's last ones
                given = {i: _unnamed() for i in range(size - failed, size)}
            self.errors += [
                dataclasses.replace(e, index=self.offset + i) for i, e in sorted(given.items())
            ]
            self.accepted += size - failed
            self.failed += failed
        self.offset += size

    def delivery(self) -> Delivery:
        if not self.answered:  # every part refused: the batch is, with the first reason
            assert self.refusal is not None
            message = f"every part of a split batch was refused; first: {self.refusal}"
            error = DeliveryError(message, REJECTED, self.refusal.status)
            return Delivery(None, error, self.retries)
        response = BatchResponse("ok", self.accepted, self.failed, self.errors or None)
        return Delivery(response, None, self.retries)


def _split_status(delivery: Delivery) -> int | None:
    """The status of a refusal about the batch's data, or None."""
    error = delivery.error
    if _refused(delivery) and error is not None and error.status in SPLIT_STATUSES:
        return error.status
    return None


def _refused(delivery: Delivery) -> bool:
    return delivery.error is not None and delivery.error.reason == REJECTED


def _alone(delivery: Delivery, size: int, total: int) -> Delivery:
    """A part refused after a split: say it was found by splitting."""
    error = delivery.error
    assert error is not None
    what = "refused alone" if size == 1 else f"a part of {size} events, not split further"
    message = f"{error} ({what}, out of a batch of {total})"
    return Delivery(None, DeliveryError(message, REJECTED, error.status), delivery.retries)


def _unnamed() -> ValidationError:
    return ValidationError(-1, "rejected by the server (no index given)", "")
