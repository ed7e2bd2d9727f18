"""What the outcome of a batch means for the counters and the callbacks: delivered,
refused in part, given up; and a synchronous send's answer or error.

The sender (``worker``) decides when a batch is settled and who settles it; this
module says what settling it does, so the worker keeps to queues, threads and
deadlines.
"""

from __future__ import annotations

from klime_mp.delivery.accounting import Ledger, decode
from klime_mp.delivery.deliverer import REJECTED, Delivery
from klime_mp.errors import DeliveryError, SendError
from klime_mp.responses import BatchResponse


def settle(ledger: Ledger, batch: list[bytes], delivery: Delivery) -> None:
    """Count and report the outcome of a batch taken from the queue."""
    response = delivery.response
    if response is None:
        error = delivery.error
        assert error is not None  # a Delivery holds a response or an error
        ledger.add("retries", delivery.retries)
        ledger.lost(error.reason, error, batch, failed=True)
        return
    rejected = rejected_events(batch, response)
    ledger.delivered(len(batch) - len(rejected), delivery.retries)
    if rejected:
        message = f"the server rejected {len(rejected)} of {len(batch)} events: "
        error = DeliveryError(message + str(response.errors), REJECTED, 200)
        ledger.lost(REJECTED, error, rejected)
    ledger.call("on_success", response)


def settle_sync(ledger: Ledger, data: bytes, delivery: Delivery) -> BatchResponse:
    """A ``*_sync`` send's outcome: counted, then returned or raised (no callbacks, as
    in the official SDK: the caller gets the result directly)."""
    if delivery.response is None:
        assert delivery.error is not None
        ledger.count_failed(delivery.error.reason, 1, delivery.retries)
        raise SendError(str(delivery.error), decode([data]))
    ledger.delivered(1 - min(max(delivery.response.failed, 0), 1), delivery.retries)
    return delivery.response


def give_up(
    ledger: Ledger, batch: list[bytes], message: str, reason: str, cause: str | None
) -> None:
    """Events shutdown could not send by its deadline, with the outage's last error."""
    error = DeliveryError(f"{message}; last error: {cause}" if cause else message, reason)
    ledger.lost(reason, error, batch, failed=True)


def rejected_events(batch: list[bytes], response: BatchResponse) -> list[bytes]:
    """The events of a delivered batch that the server refused one by one (by the
    indices of its errors; when it gives a count without indices, the last ones)."""
    failed = min(max(response.failed, 0), len(batch))
    if not failed:
        return []
    indices = sorted({e.index for e in response.errors or () if 0 <= e.index < len(batch)})
    if len(indices) != failed:
        indices = list(range(len(batch) - failed, len(batch)))
    return [batch[i] for i in indices]
