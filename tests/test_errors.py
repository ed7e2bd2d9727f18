"""One errors module: every error klime_mp raises or reports shares one base class,
keeps the built-in base it had, and a loss is never given a reason it did not have."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import klime_mp
from klime_mp import errors
from klime_mp.collector import Collector


@pytest.mark.parametrize(
    "name",
    [
        "SendError",
        "EventTooLargeError",
        "DeliveryError",
        "LossReport",
        "SpoolUnavailable",
        "LineError",
        "HeaderError",
        "ImportStopped",
    ],
)
def test_every_error_is_a_klime_error(name: str) -> None:
    assert issubclass(getattr(errors, name), klime_mp.KlimeError)


def test_value_errors_stay_value_errors() -> None:
    # Code written against the official SDK catches ValueError for a too-large event.
    assert issubclass(klime_mp.EventTooLargeError, ValueError)
    assert issubclass(errors.LineError, ValueError)
    assert issubclass(errors.HeaderError, ValueError)


def test_a_bug_while_sending_is_counted_as_an_internal_error_not_a_deadline(
    collector: Collector,
) -> None:
    reported: list[Exception] = []
    done = threading.Event()

    def on_error(error: Exception, events: list[dict[str, Any]]) -> None:
        reported.append(error)
        done.set()

    client = klime_mp.KlimeClient("key", endpoint=collector.url, on_error=on_error)
    try:
        client.track("Warm Up", user_id="u1")
        assert client.flush(10)
        worker = client._worker.get()

        def broken_send(*args: object) -> object:  # a unit stand-in for a bug below us
            raise RuntimeError("a bug")

        worker._deliverer.send = broken_send  # type: ignore[method-assign]
        client.track("Lost To A Bug", user_id="u1")
        client.flush(5)
        assert done.wait(10)
        assert client.stats().dropped == {"internal_error": 1}
        assert isinstance(reported[0], klime_mp.DeliveryError)
        assert "a bug" in str(reported[0])
    finally:
        client.shutdown()
