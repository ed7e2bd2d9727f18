"""The exit flush: once, by the process that owns the events, bounded, on every path.

The multiprocessing exit paths (finalizers, SIGTERM) are in test_multiprocessing.py;
forked children leaving through atexit or os._exit are in test_fork.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import fork_helpers as h
import pytest
from conftest import CollectorProcess


def run(collector_url: str, tmp_path: Path, name: str) -> dict[str, Any]:
    env = h.script_env(collector_url, tmp_path / "outcomes.jsonl")
    return h.run_script("exit_scenarios.py", name, env=env)


@pytest.mark.fork
def test_event_tracked_after_the_exit_flush_is_still_sent(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    # An atexit handler registered before klime_mp was imported runs after our flush.
    result = run(collector_process.url, tmp_path, "late_first_event")
    h.assert_delivered_once(collector_process, result["tags"])
    # Nothing runs after that handler: the call sent before returning (on 3.12+ from
    # the calling thread, since no thread can start at shutdown).
    kinds = [line["kind"] for line in h.read_log(tmp_path / "outcomes.jsonl")]
    assert kinds == ["success", "returned"]


@pytest.mark.fork
def test_event_tracked_after_the_exit_flush_closed_the_worker_is_sent(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    result = run(collector_process.url, tmp_path, "late_after_use")
    h.assert_delivered_once(collector_process, result["tags"])
    assert "Traceback" not in result["stderr"]


@pytest.mark.fork
def test_exit_flush_sends_from_its_own_thread_when_no_thread_can_start(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    result = run(collector_process.url, tmp_path, "first_event_in_exit_handler")
    h.assert_delivered_once(collector_process, result["tags"])
    # Python 3.12 refuses new threads in atexit handlers (3.11 and 3.13 allow them):
    # there the event was sent by the exit flush's own thread.
    allowed = sys.version_info[:2] != (3, 12)
    assert f"threads allowed: {allowed}, sender: {allowed}" in result["stderr"]


@pytest.mark.fork
def test_exit_with_the_server_down_is_bounded_by_shutdown_timeout(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{h.free_port()}"
    result = run(dead, tmp_path, "bounded")
    exit_took = time.time() - result["exiting_at"]
    assert exit_took < 1.0 + 4.0, f"exit took {exit_took:.1f}s with shutdown_timeout=1"
    errors = h.errors_in(tmp_path / "outcomes.jsonl")
    assert sum(error["count"] for error in errors) == 5, errors  # reported, with the count


@pytest.mark.fork
def test_sync_mode_sends_from_the_caller_and_never_starts_a_thread(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    result = run(collector_process.url, tmp_path, "sync_mode")
    h.assert_delivered_once(collector_process, result["tags"])
    assert not h.errors_in(tmp_path / "outcomes.jsonl")
