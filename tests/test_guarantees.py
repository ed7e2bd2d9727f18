"""Each default and promise the README and docs/ make, checked with its value written here.

The expected numbers below are copied from the README ("API reference", "Delivery") and
from the Klime API's rules, never read from the module under test: a test that imports
the constant it checks passes whatever the constant says. Each test here was seen to
fail with its guarantee broken by hand (docs/testing.md lists the mutations).

Time bounds are upper bounds with several seconds of slack (the machine is shared and
loaded); each is still far below what the broken code would take.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, cast

import pytest

from klime_mp import KlimeClient, events
from klime_mp.delivery.deliverer import Deliverer
from klime_mp.options import build_options
from tests.scripted_server import Reply, ScriptedServer

# The README's numbers.
DEFAULT_FLUSH_INTERVAL_S = 2.0
BACKOFF_CAP_S = 16.0
RETRY_AFTER_CAP_S = 60.0
EVENT_LIMIT_BYTES = 200 * 1024
# Statuses the README and the API call permanent (never retried) and transient (retried).
PERMANENT = (400, 401, 403, 404, 405, 410, 413, 414, 415, 422)
TRANSIENT = (408, 429, 500, 502, 503, 504)
# Slack added to every upper bound on waiting: scheduling on a shared 2-core machine.
SLACK_S = 5.0


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Reports:
    """A client's on_error / on_success calls."""

    def __init__(self) -> None:
        self.errors: list[tuple[BaseException, list[dict[str, Any]]]] = []
        self.successes: list[Any] = []
        self.lock = threading.Lock()

    def client(self, url: str, **options: Any) -> KlimeClient:
        options.setdefault("retry_initial_delay", 10)
        options.setdefault("flush_interval", 60_000)
        return KlimeClient(
            "key",
            endpoint=url,
            on_error=lambda e, evs: self.errors.append((e, evs)),
            on_success=self.successes.append,
            **options,
        )


# -- the flush interval bounds how long an event waits ---------------------------------


def seconds_until_sent(server: ScriptedServer, client: KlimeClient) -> float:
    started = time.monotonic()
    client.track("A", user_id="u")
    assert wait_until(lambda: bool(server.received), timeout=60)
    return server.received[0].at - started


def test_a_lone_event_waits_at_most_flush_interval(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url, flush_interval=1000)
    try:
        assert seconds_until_sent(server, client) <= 1.0 + SLACK_S
    finally:
        client.shutdown()


def test_the_default_flush_interval_is_2_seconds_of_waiting(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url)
    try:
        assert seconds_until_sent(server, client) <= DEFAULT_FLUSH_INTERVAL_S + SLACK_S
    finally:
        client.shutdown()


def test_each_event_of_a_steady_stream_waits_at_most_flush_interval(
    server: ScriptedServer,
) -> None:
    # Events keep arriving, so the queue is never empty: the timer must still fire for
    # the oldest one rather than restart with each new event.
    client = KlimeClient("key", endpoint=server.url, max_batch_size=100, flush_interval=1000)
    tracked_at: dict[int, float] = {}
    try:
        for n in range(30):
            tracked_at[n] = time.monotonic()
            client.track("A", {"n": n}, user_id="u")
            time.sleep(0.1)  # pacing the stream, not synchronisation
        assert wait_until(lambda: len(server.all_events()) == 30, timeout=60)
    finally:
        client.shutdown()
    waits = [
        request.at - tracked_at[event["properties"]["n"]]
        for request in server.received
        for event in request.events()
    ]
    assert len(server.received) >= 2  # 3 s of events at a 1 s interval: several batches
    assert max(waits) <= 1.0 + SLACK_S


# -- backoff: doubled from retry_initial_delay, equal jitter, capped at 16 s ------------
# Deliverer._delay(attempt_number, retry_after) is the policy's seam: the delay before
# attempt_number + 1. It is tested directly because waiting out a 16 s cap is too slow.


def delay_policy(retry_initial_delay_ms: int) -> Callable[[int, str | None], float]:
    options = build_options("key", retry_initial_delay=retry_initial_delay_ms)
    deliverer = Deliverer(options, cast(Any, None), threading.Event())
    return deliverer._delay


@pytest.mark.parametrize(
    ("attempt", "base"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 16.0), (12, 16.0), (60, 16.0)],
)
def test_backoff_doubles_per_attempt_within_equal_jitter_up_to_16_s(
    attempt: int, base: float
) -> None:
    delay = delay_policy(1000)  # the default retry_initial_delay
    samples = [delay(attempt, None) for _ in range(400)]
    # Equal jitter: half the base for sure, plus up to another half at random.
    assert all(base / 2 <= s <= base for s in samples), (min(samples), max(samples))


def test_backoff_starts_from_retry_initial_delay() -> None:
    delay = delay_policy(300)
    samples = [delay(1, None) for _ in range(400)]
    assert all(0.15 <= s <= 0.3 for s in samples)


def test_a_long_initial_delay_is_capped_at_16_s_too() -> None:
    delay = delay_policy(60_000)
    assert all(8.0 <= delay(1, None) <= BACKOFF_CAP_S for _ in range(200))


def test_jitter_spreads_delays_over_the_whole_upper_half() -> None:
    delay = delay_policy(1000)
    samples = [delay(4, None) for _ in range(2000)]  # base 8 s: between 4 and 8
    assert min(samples) < 4.4 and max(samples) > 7.6  # p(fail) ~ 2 * 0.9**2000
    assert len(set(samples)) > 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [("0", 0.0), ("0.5", 0.5), ("5", 5.0), ("59.5", 59.5), ("60", 60.0), ("61", 60.0)],
)
def test_retry_after_is_obeyed_up_to_60_s(header: str, expected: float) -> None:
    delay = delay_policy(1000)
    # Retry-After replaces the backoff, shorter or longer, on any attempt.
    assert delay(4, header) == expected
    assert delay(1, header) == expected


def test_retry_after_beyond_60_s_is_capped_in_seconds_and_as_a_date() -> None:
    import email.utils

    delay = delay_policy(1000)
    assert delay(1, "3600") == RETRY_AFTER_CAP_S
    in_two_hours = email.utils.formatdate(time.time() + 7200, usegmt=True)
    assert delay(1, in_two_hours) == RETRY_AFTER_CAP_S


def test_an_unreadable_retry_after_falls_back_to_the_backoff() -> None:
    delay = delay_policy(1000)
    assert all(0.5 <= delay(1, "soon") <= 1.0 for _ in range(100))


def test_waits_between_attempts_double_on_the_wire(server: ScriptedServer) -> None:
    server.then(Reply(503), Reply(503), Reply(503))
    client = Reports().client(server.url, retry_initial_delay=200)
    client.track("A", user_id="u")
    assert client.flush(30)
    at = [r.at for r in server.received]
    gaps = [later - earlier for earlier, later in zip(at, at[1:])]
    # Lower bounds only (a loaded machine only makes waits longer): 0.1, 0.2, 0.4 s.
    assert len(gaps) == 3
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4, gaps


# -- which statuses are permanent and which are retried ---------------------------------


@pytest.mark.parametrize("status", PERMANENT)
def test_permanent_status_is_sent_once_and_reported(server: ScriptedServer, status: int) -> None:
    server.then(Reply(status, body=b'{"status":"error","message":"nope"}'))
    reports = Reports()
    client = reports.client(server.url)
    client.track("A", user_id="u")
    client.flush(30)  # its result on a loss is flush()'s own promise, not this test's
    assert wait_until(lambda: client.stats().dropped == {"rejected": 1})
    assert len(server.received) == 1
    assert wait_until(lambda: bool(reports.errors))
    ((error, lost),) = reports.errors
    assert f"HTTP {status}" in str(error) and [e["event"] for e in lost] == ["A"]


@pytest.mark.parametrize("status", TRANSIENT)
def test_transient_status_is_retried_with_the_same_bytes(
    server: ScriptedServer, status: int
) -> None:
    server.then(Reply(status))
    reports = Reports()
    client = reports.client(server.url)
    client.track("A", user_id="u")
    assert client.flush(30)
    first, second = server.received
    assert first.body == second.body
    assert (client.stats().sent, client.stats().retries) == (1, 1)
    assert reports.errors == [] and client.stats().dropped == {}


def test_default_retry_max_attempts_is_5(server: ScriptedServer) -> None:
    server.then(*[Reply(500)] * 10)
    reports = Reports()
    client = reports.client(server.url, retry_initial_delay=1)
    client.track("A", user_id="u")
    client.flush(30)  # its result on a loss is flush()'s own promise, not this test's
    assert wait_until(lambda: client.stats().dropped == {"retries_exhausted": 1})
    assert len(server.received) == 5


# -- the event limit: 200 KB serialized --------------------------------------------------


def event_of_exactly(size: int) -> dict[str, Any]:
    """Arguments of a track() call whose serialized event is ``size`` bytes."""
    # timestamp and messageId have fixed lengths, so the overhead of an empty blob is
    # the same for every call.
    overhead = len(events.serialize(events.build_track("Big", {"blob": ""}, "u", None)))
    return {"blob": "x" * (size - overhead)}


def test_an_event_of_exactly_200_kb_is_accepted() -> None:
    client = KlimeClient("key", send=False)
    client.track("Big", event_of_exactly(EVENT_LIMIT_BYTES), user_id="u")
    assert client.stats().enqueued == 1 and client.stats().dropped == {}


def test_an_event_one_byte_over_200_kb_is_dropped_and_reported() -> None:
    reported: list[tuple[BaseException, list[dict[str, Any]]]] = []
    client = KlimeClient("key", send=False, on_error=lambda e, evs: reported.append((e, evs)))
    client.track("Big", event_of_exactly(EVENT_LIMIT_BYTES + 1), user_id="u")
    assert client.stats().dropped == {"oversized": 1} and client.stats().enqueued == 0
    ((error, lost),) = reported
    assert isinstance(error, ValueError) and "204801" in str(error) and "204800" in str(error)
    assert lost[0]["event"] == "Big"


def test_a_sync_event_one_byte_over_200_kb_raises_value_error(server: ScriptedServer) -> None:
    client = KlimeClient("key", endpoint=server.url)
    with pytest.raises(ValueError, match="204801"):
        client.track_sync("Big", event_of_exactly(EVENT_LIMIT_BYTES + 1), user_id="u")
    assert client.track_sync("Big", event_of_exactly(EVENT_LIMIT_BYTES), user_id="u").accepted
    assert len(server.received) == 1
