"""The klime_events fixture, registered through the pytest11 entry point: tests in a
fresh pytest process (no conftest, no -p) use it, against a real collector that must
receive nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from klime_mp.collector import Collector

APP_AND_TESTS = """
import os

import klime_mp
from klime_mp import KlimeClient

app_client = KlimeClient("key", endpoint=os.environ["COLLECTOR_URL"])  # made before any test


def sign_up(email):
    app_client.identify("usr_1", {"email": email})
    app_client.track("Signed Up", {"plan": "pro"}, user_id="usr_1", message_id="signup-1")


def test_tracked_events_are_listed_in_order(klime_events):
    klime_mp.configure("key", endpoint=os.environ["COLLECTOR_URL"])
    sign_up("jane@acme.com")
    klime_mp.group("org_1", {"name": "Acme"}, user_id="usr_1")
    response = app_client.track_sync("Report Generated", user_id="usr_1")
    assert response.status == "ok" and response.accepted == 1
    assert [e["type"] for e in klime_events] == ["identify", "track", "group", "track"]
    assert klime_events[1]["event"] == "Signed Up"
    assert klime_events[1]["properties"] == {"plan": "pro"}
    assert klime_events[1]["messageId"] == "signup-1"
    assert klime_events[0]["traits"] == {"email": "jane@acme.com"}
    assert klime_events[0]["context"]["library"]["name"] == "klime_mp"
    assert klime_mp.flush(5) and app_client.flush(5)


def test_events_are_as_before_send_left_them(klime_events):
    def redact(event):
        event.get("traits", {}).pop("email", None)
        return None if event.get("event") == "Noise" else event

    client = KlimeClient("key", endpoint=os.environ["COLLECTOR_URL"], before_send=redact)
    client.identify("usr_2", {"email": "x@y.z", "name": "X"})
    client.track("Noise", user_id="usr_2")
    assert [e["traits"] for e in klime_events] == [{"name": "X"}]


def test_each_test_starts_with_an_empty_list(klime_events):
    assert klime_events == []


def test_without_the_fixture_events_are_queued_again():
    client = KlimeClient("key", endpoint="http://127.0.0.1:9", send=False)
    client.track("A", user_id="u")
    assert client.stats().enqueued == 1
"""

MISSING_EVENT = """
from klime_mp import KlimeClient

client = KlimeClient("key", send=False)


def checkout():
    pass  # the bug: the app forgot to track "Order Completed"


def test_checkout_is_tracked(klime_events):
    checkout()
    assert "Order Completed" in [e.get("event") for e in klime_events]
"""


def run_pytest(tmp_path: Path, source: str, collector_url: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_app.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLIME_", "PYTEST_"))}
    env["COLLECTOR_URL"] = collector_url
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_fixture_lists_what_was_tracked_and_sends_nothing(
    tmp_path: Path, collector: Collector
) -> None:
    result = run_pytest(tmp_path, APP_AND_TESTS, collector.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^4 passed", result.stdout, re.M), result.stdout
    assert collector.stats().requests == 0  # nothing went over the network
    assert collector.events() == []


def test_a_test_fails_when_the_expected_event_is_missing(
    tmp_path: Path, collector: Collector
) -> None:
    result = run_pytest(tmp_path, MISSING_EVENT, collector.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "assert 'Order Completed' in []" in result.stdout


def test_the_flask_example_tests_pass_with_the_fixture(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "flask_app"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLIME_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
