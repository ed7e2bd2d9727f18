"""No silent loss: every tracked event is delivered or handed to ``on_error``.

The accounting identity, checked by message id: the events the collector stored and
the events ``on_error`` received together cover every event tracked. (An event can be
in both: a batch in flight at an exit deadline is reported and may still arrive.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.collector.faults import FaultPlan
from tests.scripted_server import Reply, ScriptedServer
from tests.servers import no_control_socket

APP = textwrap.dedent("""
    import json, os
    import klime_mp

    REPORTS = os.environ["REPORTS"]

    def on_error(error, events):
        # One line per lost event: its messageId (a LossReport may attach fewer than it
        # counts; then the rest are written as "?").
        count = getattr(error, "count", len(events))
        ids = [event["messageId"] for event in events] + ["?"] * (count - len(events))
        with open(os.path.join(REPORTS, "%d.lost" % os.getpid()), "a") as out:
            out.write("".join(i + "\\n" for i in ids))

    klime_mp.configure(on_error=on_error)

    def app(environ, start_response):
        klime_mp.track("Request", {"path": environ["PATH_INFO"]}, user_id="u1")
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def reported_ids(reports: Path) -> list[str]:
    return [line for path in reports.glob("*.lost") for line in path.read_text().split()]


def wait_until_quiet(collector: Collector, seconds: float = 1.0, limit: float = 30.0) -> int:
    """The stored count once it has not changed for ``seconds`` (late answers land)."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = collector.stats().stored
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
        time.sleep(0.1)
    return last


@pytest.mark.server
@pytest.mark.timeout(90)
def test_gunicorn_exit_budget_reports_what_a_slow_server_could_not_take(
    tmp_path: Path, collector: Collector
) -> None:
    # The case (every batch answered 3 s late, --graceful-timeout 2, SIGTERM
    # after 100 requests: 40 delivered, 60 gone without a trace) with twice the time on
    # each side: a server slower than the budget still, and room for a loaded CI box to
    # write its reports before the arbiter's SIGKILL (at 2 s, 8 of 100 went unreported
    # there, the worker killed mid-report with four suites sharing 2 cores).
    collector.faults = FaultPlan(delay=6.0)
    (tmp_path / "slowapp.py").write_text(APP)
    reports = tmp_path / "reports"
    reports.mkdir()
    port = free_port()
    env = dict(
        os.environ,
        KLIME_WRITE_KEY="key",
        KLIME_ENDPOINT=collector.url,
        REPORTS=str(reports),
        NO_PROXY="127.0.0.1",
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:klime_mp.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", "2", "--graceful-timeout", "4"]
    argv += ["--chdir", str(tmp_path), *no_control_socket(), "slowapp:app"]
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        answered = 0
        deadline = time.monotonic() + 30
        while answered < 100:
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            try:
                url = f"http://127.0.0.1:{port}/r{answered}"
                with urllib.request.urlopen(url, timeout=10) as reply:
                    assert reply.read() == b"ok"
                answered += 1
            except OSError:  # not listening yet
                time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, (tmp_path / "gunicorn.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()

    wait_until_quiet(collector)
    stored = set(collector.message_ids())
    lost = reported_ids(reports)
    assert "?" not in lost
    assert len(stored | set(lost)) == 100, (len(stored), len(lost))
    assert len(lost) > 0  # the case really ran into the budget


def test_every_loss_reason_reaches_on_error_with_its_count(collector: Collector) -> None:
    reports: list[tuple[str, int]] = []

    def on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
        reason = getattr(error, "reason", "?")
        reports.append((reason, getattr(error, "count", len(events))))

    client = KlimeClient("key", collector.url, max_queue_size=5, on_error=on_error)
    with client._worker.get()._send_lock:  # the sender is held: the queue fills
        for n in range(12):
            client.track("Full", {"n": n}, user_id="u")
    assert client.flush(10) is False
    client.shutdown()
    client.track("Late", user_id="u")  # after shutdown: reported at once, not dropped unseen

    assert sorted(reports) == [("after_shutdown", 1), ("queue_full", 7)]
    stats = client.stats()
    assert stats.dropped == {"queue_full": 7, "after_shutdown": 1}
    assert stats.sent + sum(stats.dropped.values()) == 13
    assert collector.stats().stored == 5


def test_shutdown_returns_only_after_the_senders_report_of_a_batch_it_settled() -> None:
    # The sender settles a refused batch as the shutdown deadline passes and is still in
    # on_error when shutdown() would return: shutdown waits for that report (about a
    # second at most), so every loss has reached on_error when it returns.
    in_callback = threading.Event()
    reported: list[int] = []

    def slow_on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
        in_callback.set()
        time.sleep(0.5)  # the report itself takes time: not a synchronisation
        reported.append(len(events))

    server = ScriptedServer().start()
    try:
        # 422: refused whole (a 400 would be split into halves, each its own report).
        server.then(Reply(422, b'{"status":"error","message":"no"}'))
        client = KlimeClient("key", server.url, shutdown_timeout=0.1, on_error=slow_on_error)
        for n in range(5):
            client.track("Refused", {"n": n}, user_id="u")
        client.flush(0.01)  # wakes the sender for the partial batch; does not wait
        assert in_callback.wait(10)
        client.shutdown()
        assert reported == [5]
    finally:
        server.stop()
