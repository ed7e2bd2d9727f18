"""gevent: with every primitive patched, the sender still sends, and ``track()`` never
hands control to the hub.

Under ``monkey.patch_all()`` (what ``gunicorn -k gevent`` does in each worker) the
sender thread is a greenlet and its Lock, Condition and Event are gevent's; the queue
is a ``collections.deque``, which gevent leaves alone (posthog-python lost every event
when gevent 25.4 changed ``queue.Queue``; klime_mp does not use it). A ``track()`` that
yielded could let another greenlet run in the middle of it; it appends in one step
under a lock that is never held across I/O, so it does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from klime_mp.collector import Collector
from tests.servers import (
    Servers,
    assert_each_request_in_order,
    assert_exactly_once,
    run_load,
    running_servers,
    stop_and_count,
)

pytestmark = pytest.mark.server

pytest.importorskip("gevent")

GREENLETS = 20
EVENTS_EACH = 10

PROBE = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, sys
    import gevent, greenlet
    import klime_mp

    client = klime_mp.configure("key", endpoint=sys.argv[1])
    klime_mp.track("Warm Up", user_id="usr_warm")  # starts the sender greenlet

    inside_track = set()
    switches = []

    def trace(event, args):
        if event in ("switch", "throw") and args[0] in inside_track:
            switches.append(event)

    greenlet.settrace(trace)
    # Calibration: a call that does yield is seen, so zero below means none happened.
    inside_track.add(greenlet.getcurrent())
    gevent.sleep(0.001)
    inside_track.clear()
    tracer_works = len(switches) > 0
    switches.clear()

    def user(number):
        me = greenlet.getcurrent()
        for step in range(int(sys.argv[3])):
            inside_track.add(me)
            klime_mp.track("Step", {"user": number, "step": step}, user_id=f"usr_{number}")
            inside_track.discard(me)
            gevent.sleep(0)  # let the others in between calls: interleaved users

    gevent.joinall([gevent.spawn(user, n) for n in range(int(sys.argv[2]))])
    greenlet.settrace(None)
    delivered = klime_mp.flush(30)
    worker = client._worker.peek()
    waiting = worker._memory._waiting
    print(json.dumps({
        "delivered": delivered,
        "switches_inside_track": len(switches),
        "queue": type(waiting).__module__ + "." + type(waiting).__name__,
        "lock_is_gevents": type(worker._lock).__module__.startswith("gevent"),
        "tracer_works": tracer_works,
        "stats": klime_mp.get_client().stats().sent,
    }))
    """
)


# A gevent process whose only event is sent by the exit flush, on a connection it has
# not opened yet: what a Gunicorn gevent worker that served one request does at exit.
FIRST_CONNECTION_AT_EXIT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import sys
    import klime_mp

    klime_mp.configure("key", endpoint=sys.argv[1], flush_interval=600_000)
    klime_mp.track("Only Event", user_id="usr_1")
    """
)


def test_the_exit_flush_opens_its_first_connection_under_gevent(collector: Collector) -> None:
    # gevent resolves a host (even 127.0.0.1) in a native thread pool, and Python 3.12
    # starts no thread at interpreter shutdown: the exit flush must resolve without one.
    result = subprocess.run(
        [sys.executable, "-c", FIRST_CONNECTION_AT_EXIT, collector.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "lost" not in result.stderr, result.stderr
    assert collector.wait_for(1, 10), result.stderr
    assert [event["event"] for event in collector.events()] == ["Only Event"]


def test_track_never_yields_and_every_event_arrives_in_order(collector: Collector) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, collector.url, str(GREENLETS), str(EVENTS_EACH)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["delivered"] is True
    assert report["tracer_works"] is True
    assert report["switches_inside_track"] == 0
    assert report["queue"] == "collections.deque"
    assert report["lock_is_gevents"] is True  # the sender really ran on patched primitives
    total = 1 + GREENLETS * EVENTS_EACH
    assert report["stats"] == total
    collector.wait_for(total, 10)
    assert collector.stats().stored == total
    assert collector.stats().duplicates == 0
    steps: dict[int, list[int]] = {}
    for event in collector.events():
        if event["event"] == "Step":
            properties = event["properties"]
            steps.setdefault(properties["user"], []).append(properties["step"])
    assert steps == {user: list(range(EVENTS_EACH)) for user in range(GREENLETS)}


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_gevent_workers_deliver_every_event_in_order(
    servers: Servers, collector: Collector, preload: bool
) -> None:
    options = ["--worker-class", "gevent"] + (["--preload"] if preload else [])
    server = servers.bare_gunicorn(*options, workers=2)
    load = run_load(server, total=100, concurrency=8)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert_each_request_in_order(collector)
