"""OpenTelemetry metrics: the client's health where operators already look.

When ``opentelemetry-api`` is importable, the first client built (``metrics=True``, the
default) registers observable instruments on the meter ``klime_mp`` of the *global*
MeterProvider. The API hands out a proxy meter until a provider is set and moves its
instruments over when one is, so a provider set before or after ``configure()`` works.
The instruments are read at collection time from the counters the client keeps anyway
(``delivery.census``): nothing is added to ``track()``. Each process reports its own
counts (a forked worker starts from zero), summed over its clients.

    klime.events.accepted   counter  events track/identify/group accepted
    klime.events.delivered  counter  events the server took
    klime.events.dropped    counter  events not delivered, by ``reason`` (the keys of
                                     ``stats().dropped``; ``answer_unknown``: sent, and
                                     the server may have them)
    klime.requests.failed   counter  HTTP attempts that failed (no answer, or not 200)
    klime.queue.size        gauge    events waiting now (memory and this process's spool)
    klime.spool.events      gauge    events of this process waiting on disk
    klime.spool.bytes       gauge    bytes of the spool's files for the app (all processes)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Callable

from klime_mp._version import __version__
from klime_mp.delivery import census

logger = logging.getLogger(__name__)

METER_NAME = "klime_mp"
_registered = False  # once per interpreter: a forked child inherits the instruments


def register() -> bool:
    """Register the instruments, once; False when OpenTelemetry is not installed."""
    global _registered
    if _registered:
        return True
    try:
        from opentelemetry import metrics
    except ImportError:
        return False
    _registered = True
    try:
        _create(metrics.get_meter(METER_NAME, __version__), metrics.Observation)
    except Exception:  # a broken provider must not fail the app's start-up
        logger.warning("Klime: could not register the OpenTelemetry metrics", exc_info=True)
    return True


def _create(meter: Any, observation: Callable[..., Any]) -> None:
    def read(pick: Callable[[census.Totals], int]) -> Callable[[Any], Iterable[Any]]:
        return lambda _options: [observation(pick(census.totals()))]

    def dropped(_options: Any) -> Iterable[Any]:
        counts = census.totals().dropped
        return [observation(count, {"reason": reason}) for reason, count in counts.items()]

    def spool_bytes(_options: Any) -> Iterable[Any]:
        return [observation(census.spool_bytes(census.totals().spool_dirs))]

    counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
    counter(
        "klime.events.accepted",
        [read(lambda t: t.accepted)],
        "{event}",
        "Events accepted by track, identify and group",
    )
    counter(
        "klime.events.delivered",
        [read(lambda t: t.delivered)],
        "{event}",
        "Events the Klime server took",
    )
    counter("klime.events.dropped", [dropped], "{event}", "Events not delivered, by reason")
    counter(
        "klime.requests.failed",
        [read(lambda t: t.failed_requests)],
        "{request}",
        "HTTP attempts that failed: no answer, or an answer other than 200",
    )
    gauge("klime.queue.size", [read(lambda t: t.queued)], "{event}", "Events waiting now")
    gauge(
        "klime.spool.events",
        [read(lambda t: t.spooled)],
        "{event}",
        "Events of this process waiting in the spool",
    )
    gauge("klime.spool.bytes", [spool_bytes], "By", "Size of the spool's files for the app")
