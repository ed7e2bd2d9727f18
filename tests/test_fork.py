"""Fork safety with os.fork(): every event arrives exactly once, from the process that
tracked it, and no child hangs.

The forking happens in scenario scripts (tests/scripts/fork_scenarios.py) run in their
own process group: pytest (and xdist's threads) never fork, a child never returns into
pytest, and a timeout kills every process of a scenario. Each test then counts the
collector's stored events by tag and its duplicate receipts by message id.
"""

from __future__ import annotations

import subprocess
import sys
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fork_helpers as h
import pytest
from conftest import CollectorProcess

from klime_mp.lifecycle import forksafe

# -- the registry, without forking (the PID source is injectable) ---------------------------


class FakeState:
    def __init__(self) -> None:
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True

    # The rest of forksafe.PerProcessState: a fake has nothing queued.
    def size(self) -> int:
        return 0

    def begin_flush(self) -> Callable[[float], bool]:
        return lambda deadline: True


def test_value_is_built_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[FakeState] = []
    local = forksafe.ProcessLocal(
        lambda: built.append(FakeState()) or built[-1], lambda value, budget: None
    )
    assert local.peek() is None, "peek never builds"
    first = local.get()
    assert local.get() is first and local.peek() is first and len(built) == 1


def test_new_pid_rebuilds_and_abandons_the_parents_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the first call in a uWSGI worker sees: no hook ran, only the PID changed.
    local = forksafe.ProcessLocal(FakeState, lambda value, budget: None)
    parent = local.get()
    monkeypatch.setattr(forksafe, "getpid", lambda: 999_999_999)
    assert local.peek() is None, "the parent's value is invisible in the child"
    child = local.get()
    assert child is not parent and parent.abandoned and not child.abandoned


def test_at_fork_hook_only_moves_references(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def factory() -> FakeState:
        calls.append("factory")
        return FakeState()

    live: weakref.WeakSet[forksafe.ProcessLocal[FakeState]] = weakref.WeakSet()
    monkeypatch.setattr(forksafe, "_live", live)
    monkeypatch.setattr(forksafe, "_owned", set())
    monkeypatch.setattr(forksafe, "_locks_by_pid", {})
    local = forksafe.ProcessLocal(factory, lambda value, budget: calls.append("exit"))
    parent = local.get()
    held = forksafe.process_lock()
    held.acquire()  # as if another thread held it at the fork
    forksafe._after_fork_in_child()  # what os.fork() runs in the child
    assert calls == ["factory"], "the hook must build, flush and call nothing"
    assert not parent.abandoned, "releasing the parent's state waits for the first call"
    assert forksafe.process_lock() is not held, "the child gets a new lock, never the held one"
    monkeypatch.setattr(forksafe, "getpid", lambda: 999_999_998)
    child = local.get()
    assert child is not parent and parent.abandoned
    held.release()


def test_one_at_fork_registration_for_any_number_of_clients() -> None:
    code = """
import os
registered = []
real = os.register_at_fork
def counting(**hooks):
    registered.append(hooks)
    real(**hooks)
os.register_at_fork = counting
import klime_mp
before = len(registered)
clients = [klime_mp.KlimeClient("k", endpoint="http://127.0.0.1:9") for _ in range(50)]
for c in clients:
    c.track("e", user_id="u")  # builds every per-process worker
def of_klime_mp(hooks):
    modules = [getattr(hook, "__module__", None) or "" for hook in hooks.values()]
    return any(module.startswith("klime_mp") for module in modules)
ours = "klime_mp.lifecycle.forksafe"
mine = [h for h in registered if getattr(h.get("after_in_child"), "__module__", "") == ours]
# Registrations of klime_mp's after the import; a library imported on first use may add
# its own (on Python 3.9 opentelemetry-api loads importlib_metadata, which registers one).
print(len(mine), len([h for h in registered[before:] if of_klime_mp(h)]))
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.stdout.split() == ["1", "0"], out.stderr


# -- real forks --------------------------------------------------------------------------


def run(collector: CollectorProcess, tmp_path: Path, *args: str, **kw: Any) -> dict[str, Any]:
    log = tmp_path / "outcomes.jsonl"
    result = h.run_script("fork_scenarios.py", *args, env=h.script_env(collector.url, log), **kw)
    assert not h.errors_in(log), h.errors_in(log)
    return result


@pytest.mark.fork
@pytest.mark.parametrize("exit_with", ["sys.exit", "os._exit"])
def test_child_does_not_resend_parent_events(
    collector_process: CollectorProcess, tmp_path: Path, exit_with: str
) -> None:
    result = run(collector_process, tmp_path, "queued_before_fork", exit_with)
    h.assert_delivered_once(collector_process, result["tags"])


@pytest.mark.fork
def test_grandchild_sends_only_its_own_events(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    result = run(collector_process, tmp_path, "grandchild")
    h.assert_delivered_once(collector_process, result["tags"])


@pytest.mark.fork
def test_double_fork_daemon_flushes_at_exit(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    result = run(collector_process, tmp_path, "daemon")
    h.assert_delivered_once(collector_process, result["tags"])


@pytest.mark.fork
@pytest.mark.parametrize("exit_with", ["sys.exit", "os._exit"])
def test_fork_from_c_without_hooks_is_caught_by_the_pid_check(
    collector_process: CollectorProcess, tmp_path: Path, exit_with: str
) -> None:
    result = run(collector_process, tmp_path, "c_level_fork", exit_with)
    h.assert_delivered_once(collector_process, result["tags"])


@pytest.mark.fork
def test_configured_master_stays_single_threaded_and_never_warns(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    # -W error: on Python 3.12+ forking a multi-threaded process warns (DeprecationWarning);
    # a master that only called configure() has no thread to warn about.
    result = run(
        collector_process, tmp_path, "configure_then_fork", "3", python_flags=["-W", "error"]
    )
    assert "Warning" not in str(result["stderr"])
    h.assert_delivered_once(collector_process, result["tags"])


@pytest.mark.fork
def test_inherited_keep_alive_connection_is_never_shared(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    children = 3
    before = collector_process.stats()["connections"]  # counts its own connection
    result = run(collector_process, tmp_path, "keep_alive", str(children))
    opened = collector_process.stats()["connections"] - before - 1
    # One connection per process: the parent's survived its children (a child that shut
    # it down, or used it, would have made the parent reconnect).
    assert opened == 1 + children
    events = h.assert_delivered_once(collector_process, result["tags"])
    # Each answer reached the process that asked: what each process saw accepted is
    # exactly what the collector stored from it.
    stored_by_pid = Counter(event["properties"]["pid"] for event in events)
    accepted_by_pid: Counter[int] = Counter()
    for line in h.read_log(tmp_path / "outcomes.jsonl"):
        accepted_by_pid[line["pid"]] += line["accepted"]
    assert accepted_by_pid == stored_by_pid
    assert len(stored_by_pid) == 1 + children


@pytest.mark.fork
def test_fork_while_another_thread_holds_every_lock(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    result = run(collector_process, tmp_path, "held_locks")
    h.assert_delivered_once(collector_process, result["tags"])


@pytest.mark.fork
def test_forking_200_times_while_four_threads_track(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    result = run(collector_process, tmp_path, "stress", "200", timeout=28)
    h.assert_delivered_once(collector_process, result["tags"])
    print(f"stress: {result['thread_events']} + 200 events in {result['seconds']:.1f}s")


@pytest.mark.fork
def test_fork_while_the_sender_waits_for_an_answer(tmp_path: Path) -> None:
    slow = CollectorProcess(tmp_path / "events.sqlite3", "--delay", "0.4")
    try:
        result = run(slow, tmp_path, "mid_request")
        h.assert_delivered_once(slow, result["tags"])
    finally:
        slow.stop()


@pytest.mark.fork
def test_fork_while_the_sender_sleeps_in_backoff(tmp_path: Path) -> None:
    port = h.free_port()  # nothing listens yet: every attempt is refused
    log = tmp_path / "outcomes.jsonl"
    env = h.script_env(f"http://127.0.0.1:{port}", log)
    proc = h.start_script("fork_scenarios.py", "in_backoff", env=env)
    collector = None
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        collector = CollectorProcess(tmp_path / "events.sqlite3", "--port", str(port))
        result = h.finish_script(proc)
        assert not h.errors_in(log), h.errors_in(log)
        h.assert_delivered_once(collector, result["tags"])
    finally:
        h.kill_group(proc.pid)
        proc.wait()
        if collector is not None:
            collector.stop()
