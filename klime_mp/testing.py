"""A pytest plugin: the ``klime_events`` fixture, to test what an app tracked.

Installed with klime_mp (the ``pytest11`` entry point), so a test only names it::

    def test_signup_is_tracked(klime_events):
        signup("jane@acme.com")
        assert [e["event"] for e in klime_events] == ["Signed Up"]

During a test that uses it, every event that any client (or a module-level call) of
this process would send is appended to the list instead, in order, as the dict it would
have been sent as: after ``before_send`` (an event it drops is not there) and the size
check, with its ``messageId`` and timestamp. Nothing is queued and nothing goes over
the network: a test never sends to a live project by mistake. The ``*_sync`` calls
return an "ok" ``BatchResponse`` for the one event. Events tracked in other processes
(a forked worker) are not seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

Event = dict[str, Any]


@pytest.fixture
def klime_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Event]]:
    """The events tracked during this test, as they would have been sent."""
    # Imported here, not at the top: pytest loads this plugin in every test run of every
    # project that has klime_mp installed, most of which never use the fixture.
    from klime_mp.delivery.transport import Attempt, Transport
    from klime_mp.delivery.worker import Worker
    from klime_mp.responses import BatchResponse

    tracked: list[Event] = []

    def enqueue(worker: Worker, data: bytes) -> None:
        tracked.append(json.loads(data))

    def send_now(worker: Worker, data: bytes) -> BatchResponse:
        tracked.append(json.loads(data))
        return BatchResponse(status="ok", accepted=1, failed=0)

    def post(transport: Transport, body: bytes, timeout: float) -> Attempt:
        # Nothing reaches the queue, so nothing should get here; if something does (a
        # spool's events left by an earlier run), it fails like an unreachable server.
        return Attempt(status=None, error="klime_events: no network during this test")

    # The class methods, not one client's: clients made before the test (an app's
    # module-level one, the default client) are caught too.
    monkeypatch.setattr(Worker, "enqueue", enqueue)
    monkeypatch.setattr(Worker, "send_now", send_now)
    monkeypatch.setattr(Transport, "post", post)
    yield tracked
