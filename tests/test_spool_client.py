"""Accepted means durable: with ``spool_dir``, an event that track() accepted is
delivered even when its process dies any way at all, by a live sibling or the next
process of the same app. Real processes, real SIGKILL, a real collector process."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.collector.faults import FaultPlan
from klime_mp.spool.log import status as spool_status
from tests.conftest import CollectorProcess

KEY = "spool-key"

pytestmark = pytest.mark.fork

# A process that tracks ``count`` events through a spooled client, then dies as told.
TRACKER = textwrap.dedent("""
    import os, signal, sys, time
    from klime_mp import KlimeClient

    endpoint, spool, count, death = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = KlimeClient("spool-key", endpoint, spool_dir=spool, retry_initial_delay=50)
    for n in range(count):
        client.track("Spooled", {"n": n, "pid": os.getpid()}, user_id="u")
    if death == "wait-for-a-batch":  # die with batches in flight or just sent
        deadline = time.monotonic() + 10
        while client.stats().sent == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
    print("tracked", flush=True)
    if death == "exit":
        os._exit(0)  # no atexit, no finalizers
    os.kill(os.getpid(), signal.SIGKILL)
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def late_collector(tmp_path: Path) -> Iterator[tuple[str, Callable[[], CollectorProcess]]]:
    """An endpoint with nothing behind it yet, and a way to start the collector there:
    the same app (same endpoint and key) before and after its server comes back."""
    port = free_port()
    started: list[CollectorProcess] = []

    def start() -> CollectorProcess:
        started.append(CollectorProcess(tmp_path / "late.sqlite3", "--port", str(port)))
        return started[-1]

    yield f"http://127.0.0.1:{port}", start
    for proc in started:
        proc.stop()


def run_tracker(tmp_path: Path, endpoint: str, spool: Path, count: int, death: str) -> int:
    script = tmp_path / "tracker.py"
    script.write_text(TRACKER)
    result = subprocess.run(
        [sys.executable, str(script), endpoint, str(spool), str(count), death],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "tracked" in result.stdout, result.stderr
    return result.returncode


SUCCESSOR = textwrap.dedent("""
    import json, sys
    from klime_mp import KlimeClient

    client = KlimeClient("spool-key", sys.argv[1], spool_dir=sys.argv[2])
    client.track("Successor", user_id="u")
    delivered = client.shutdown()
    stats = client.stats()
    outcome = {"delivered": delivered, "recovered": stats.recovered, "resent": stats.resent}
    print(json.dumps(outcome))
""")


def successor_delivers(url: str, spool: Path) -> dict[str, Any]:
    """The next process of the app: its first event and its exit flush send the orphans."""
    result = subprocess.run(
        [sys.executable, "-c", SUCCESSOR, url, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    return outcome


def wait_until_released(spool: Path) -> None:
    """After shutdown() in this process: its sender lets go of its log as soon as its
    last attempt returns (then a successor can claim what is left)."""
    deadline = time.monotonic() + 20
    while any(state.live for state in spool_status(spool)):
        assert time.monotonic() < deadline, spool_status(spool)
        time.sleep(0.05)


def stored_counts(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[event["event"]] = counts.get(event["event"], 0) + 1
    return counts


def test_a_sigkilled_process_leaves_all_500_events_to_its_successor(
    tmp_path: Path, late_collector: tuple[str, Callable[[], CollectorProcess]]
) -> None:
    spool = tmp_path / "spool"
    url, start = late_collector
    code = run_tracker(tmp_path, url, spool, 500, "kill")  # its server is down
    assert code == -signal.SIGKILL

    collector_process = start()
    successor = successor_delivers(url, spool)

    assert collector_process.wait_for(501)
    stats = collector_process.stats()
    assert stats["stored"] == 501 and stats["duplicates"] == 0
    ns = sorted(e["properties"]["n"] for e in collector_process.events() if e["event"] == "Spooled")
    assert ns == list(range(500))
    assert successor["delivered"] and successor["recovered"] == 500
    # The batch it was retrying when it died counts as possibly sent (it cannot know).
    assert successor["resent"] <= 100


def test_a_process_killed_with_batches_in_flight_is_resent_at_most_once_per_batch(
    tmp_path: Path, collector_process: CollectorProcess
) -> None:
    spool = tmp_path / "spool"
    assert run_tracker(tmp_path, collector_process.url, spool, 500, "wait-for-a-batch") < 0
    successor = successor_delivers(collector_process.url, spool)
    assert collector_process.wait_for(501)
    stats = collector_process.stats()
    assert stats["stored"] == 501
    # Only what was in flight (one batch) comes twice, and the successor counts it.
    assert stats["duplicates"] <= successor["resent"] <= 100


def test_os_exit_loses_nothing_either(
    tmp_path: Path, late_collector: tuple[str, Callable[[], CollectorProcess]]
) -> None:
    spool = tmp_path / "spool"
    url, start = late_collector
    assert run_tracker(tmp_path, url, spool, 50, "exit") == 0  # no atexit, server down
    collector_process = start()
    successor_delivers(url, spool)
    assert collector_process.wait_for(51)
    assert collector_process.stats()["duplicates"] == 0


@pytest.mark.timeout(60)
def test_a_live_sibling_sends_a_dead_process_events_within_seconds(
    tmp_path: Path, collector_process: CollectorProcess
) -> None:
    spool = tmp_path / "spool"
    sibling = KlimeClient(KEY, collector_process.url, spool_dir=spool)
    sibling.track("Sibling", user_id="u")  # a live process of the same app
    assert sibling.flush(10)
    killed_at = time.monotonic()
    run_tracker(tmp_path, collector_process.url, spool, 100, "kill")
    assert collector_process.wait_for(101, timeout=30)  # no call of ours needed
    took = time.monotonic() - killed_at
    sibling.shutdown()
    assert took < 15, took
    assert 0 < sibling.stats().recovered <= 100  # (the dead one may have sent some)


def test_the_spool_rides_out_an_outage_longer_than_the_retry_window(
    tmp_path: Path, collector: Collector
) -> None:
    # Two attempts 50 ms apart would drop a batch in a fraction of a second without
    # a spool; with one, the events wait on disk until the server answers again.
    collector.faults = FaultPlan(error_rate=1.0)
    client = KlimeClient(
        KEY,
        collector.url,
        spool_dir=tmp_path / "spool",
        retry_max_attempts=2,
        retry_initial_delay=50,
    )
    for n in range(300):
        client.track("Outage", {"n": n}, user_id="u")
    assert client.flush(2) is False  # not delivered yet: must not say so
    assert client.stats().dropped == {}
    collector.faults = FaultPlan()
    assert collector.wait_for(300, timeout=40)
    assert client.flush(10) is True
    assert client.shutdown() is True
    assert client.stats().dropped == {}


def test_shutdown_during_an_outage_leaves_the_events_on_disk_not_lost(
    tmp_path: Path, late_collector: tuple[str, Callable[[], CollectorProcess]]
) -> None:
    spool = tmp_path / "spool"
    url, start = late_collector
    errors: list[BaseException] = []
    client = KlimeClient(
        KEY,
        url,
        spool_dir=spool,
        shutdown_timeout=1,
        on_error=lambda e, _: errors.append(e),
    )
    for _ in range(40):
        client.track("Kept", user_id="u")
    assert client.shutdown() is False  # not delivered...
    assert errors == [] and client.stats().dropped == {}  # ...but not lost either
    wait_until_released(spool)
    assert spool_status(spool)[0].pending == 40
    collector_process = start()
    successor_delivers(url, spool)
    assert collector_process.wait_for(41)
    assert collector_process.stats()["duplicates"] == 0


def test_a_burst_is_not_dropped_with_a_spool(
    tmp_path: Path, collector_process: CollectorProcess
) -> None:
    client = KlimeClient(KEY, collector_process.url, spool_dir=tmp_path / "spool")
    for n in range(50_000):
        client.track("Burst", {"n": n}, user_id="u")
    client.flush(60)
    client.shutdown()
    assert client.stats().dropped == {}
    assert collector_process.wait_for(50_000, timeout=60)


def test_an_unusable_spool_directory_falls_back_to_memory_with_one_warning(
    tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")  # root ignores permissions; a file as the path cannot work
    client = KlimeClient(KEY, collector.url, spool_dir=not_a_dir)
    for _ in range(30):
        client.track("Memory", user_id="u")  # never raises
    assert client.flush(10) is True
    warnings = [r for r in caplog.records if "spool" in r.getMessage()]
    assert len(warnings) == 1
    assert collector.stats().stored == 30


def test_a_forked_child_writes_its_own_log_and_the_parent_keeps_its_own(
    tmp_path: Path, late_collector: tuple[str, Callable[[], CollectorProcess]]
) -> None:
    spool = tmp_path / "spool"
    url, start = late_collector
    client = KlimeClient(KEY, url, spool_dir=spool, shutdown_timeout=0.5)
    client.track("Parent", user_id="u")
    pid = os.fork()
    if pid == 0:  # the child: its own events, then a death that runs nothing
        try:
            for _ in range(10):
                client.track("Child", user_id="u")
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    client.track("Parent", user_id="u")
    app = next(path for path in spool.iterdir() if path.is_dir())  # not its .endpoint note
    ledgers = list(app.glob("*.ledger"))  # one per log, i.e. per writing process
    assert len(ledgers) == 2  # the child never appended to the parent's log
    client.shutdown()
    wait_until_released(spool)
    collector_process = start()
    successor_delivers(url, spool)
    assert collector_process.wait_for(13)
    counts = stored_counts(collector_process.events())
    assert counts == {"Parent": 2, "Child": 10, "Successor": 1}


def test_the_write_key_is_never_written_to_disk(tmp_path: Path, collector: Collector) -> None:
    spool = tmp_path / "spool"
    secret = "sk_live_do_not_store_me"
    client = KlimeClient(secret, dead_endpoint(), spool_dir=spool, shutdown_timeout=0.5)
    client.track("Secret", {"note": "x"}, user_id="u")
    client.shutdown()
    for path in spool.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_spool_drain_sends_what_dead_processes_left_and_says_so(
    tmp_path: Path, late_collector: tuple[str, Callable[[], CollectorProcess]]
) -> None:
    spool = tmp_path / "spool"
    url, start = late_collector
    run_tracker(tmp_path, url, spool, 120, "kill")
    env = dict(os.environ, KLIME_WRITE_KEY=KEY, KLIME_ENDPOINT=url)
    drain = [sys.executable, "-m", "klime_mp", "spool", "drain", str(spool), "--timeout", "3"]

    still_down = subprocess.run(drain, env=env, capture_output=True, text=True, timeout=60)
    assert still_down.returncode == 1, still_down.stdout + still_down.stderr
    assert "1 logs still waiting" in still_down.stdout

    collector_process = start()
    drained = subprocess.run(drain, env=env, capture_output=True, text=True, timeout=60)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "sent 120 events left by dead processes; 0 logs still waiting" in drained.stdout
    assert collector_process.stats()["stored"] == 120


@pytest.mark.timeout(120)
def test_a_thirty_second_outage_at_40_events_a_second_loses_nothing_with_a_spool(
    tmp_path: Path, collector: Collector
) -> None:
    # Without a spool the batch being probed when its attempts run out is lost
    # (tests/test_outage.py); with one, everything waits on disk and arrives after.
    errors: list[BaseException] = []
    client = KlimeClient(
        KEY, collector.url, spool_dir=tmp_path / "spool", on_error=lambda e, _: errors.append(e)
    )
    tracked = 0

    def track_for(seconds: float) -> None:
        nonlocal tracked
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            while tracked < 40 * elapsed:
                client.track("Steady", {"n": tracked}, user_id="u")
                tracked += 1
            time.sleep(0.005)  # pacing the load, not synchronisation

    track_for(2)
    collector.faults = FaultPlan(error_rate=1.0)  # 503s for 30 s
    track_for(30)
    collector.faults = FaultPlan()
    track_for(2)
    assert collector.wait_for(tracked, timeout=40)  # the backoff is capped at 16 s
    assert client.flush(10) is True
    client.shutdown()
    assert client.stats().dropped == {} and errors == []
    assert collector.stats().stored == tracked


def test_spool_drain_with_a_key_of_no_app_in_dir_fails_lists_the_apps_and_creates_nothing(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    endpoint = dead_endpoint()
    run_tracker(tmp_path, endpoint, spool, 30, "kill")
    before = sorted(path.name for path in spool.iterdir())
    drain = [sys.executable, "-m", "klime_mp", "spool", "drain", str(spool)]
    drain += ["--write-key", "another-key", "--endpoint", endpoint, "--timeout", "3"]
    done = subprocess.run(drain, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    (app,) = [path.name for path in spool.iterdir() if path.is_dir()]
    found = f"found app {app} ({endpoint}): 30 events pending, oldest "
    assert found in done.stderr, done.stderr
    assert sorted(path.name for path in spool.iterdir()) == before  # nothing created


@pytest.mark.parametrize("status", [401, 403, 404, 405, 407])
def test_an_answer_about_the_setup_keeps_the_spooled_events_and_says_so_once(
    tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    collector.faults = FaultPlan(error_rate=1.0, status=status)  # a misrouted deploy
    client = KlimeClient(KEY, collector.url, spool_dir=tmp_path / "spool", retry_initial_delay=50)
    with caplog.at_level(logging.ERROR, logger="klime"):
        for n in range(300):
            client.track("Misrouted", {"n": n}, user_id="u")
        assert client.flush(2) is False  # probed at least twice, kept
    assert client.stats().dropped == {}
    assert client.stats().queued == 300
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"HTTP {status}" in errors[0].getMessage(), errors
    collector.faults = FaultPlan()  # fixed: the probes find out
    assert collector.wait_for(300, timeout=40)
    assert client.shutdown() is True
    assert client.stats().dropped == {}
