"""multiprocessing workers (fork, forkserver, spawn): every task's event arrives once.

The client is created and used in the parent before the workers start, as an
application module would do; spawn and forkserver children build theirs by importing
that module (tests/fork_helpers.py). Workers leave through os._exit, so only the
multiprocessing finalizer (and, for ``with Pool()``, the SIGTERM flush) sends their
queued events.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fork_helpers as h
import pytest
from conftest import CollectorProcess

METHODS = ["fork", "forkserver", "spawn"]
TASKS = 12
ROUNDS = 100  # of Pool.terminate() in test_pool_terminate_always_returns_under_load


def run(
    collector: CollectorProcess, tmp_path: Path, method: str, kind: str, tasks: int = TASKS
) -> None:
    log = tmp_path / "outcomes.jsonl"
    env = h.script_env(collector.url, log)
    result = h.run_script("pool_scenarios.py", method, kind, str(tasks), env=env)
    assert not h.errors_in(log), h.errors_in(log)
    h.assert_delivered_once(collector, result["tags"])
    assert len(result["tags"]) == tasks + 7


@pytest.mark.fork
@pytest.mark.parametrize("method", METHODS)
def test_pool_close_join_delivers_every_task_event_once(
    collector_process: CollectorProcess, tmp_path: Path, method: str
) -> None:
    run(collector_process, tmp_path, method, "close_join")


@pytest.mark.fork
@pytest.mark.parametrize("method", METHODS)
def test_with_pool_terminate_still_delivers_every_task_event(
    collector_process: CollectorProcess, tmp_path: Path, method: str
) -> None:
    # Pool.__exit__ calls terminate(): idle workers holding queued events get SIGTERM.
    run(collector_process, tmp_path, method, "with_pool")


@pytest.mark.fork
@pytest.mark.parametrize("method", METHODS)
def test_process_pool_executor_delivers_every_task_event_once(
    collector_process: CollectorProcess, tmp_path: Path, method: str
) -> None:
    run(collector_process, tmp_path, method, "executor")


@pytest.mark.fork
@pytest.mark.parametrize("method", METHODS)
def test_plain_processes_flush_at_exit(
    collector_process: CollectorProcess, tmp_path: Path, method: str
) -> None:
    run(collector_process, tmp_path, method, "process")


@pytest.mark.fork
@pytest.mark.parametrize("method", METHODS)
def test_terminated_process_flushes_on_sigterm_then_dies_of_it(
    collector_process: CollectorProcess, tmp_path: Path, method: str
) -> None:
    run(collector_process, tmp_path, method, "terminate", tasks=3)


@pytest.mark.fork
def test_billiard_processes_flush_at_exit(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    # billiard (Celery) children run multiprocessing.util's finalizers, but
    # multiprocessing.parent_process() is None in them. (Its pool workers leave through
    # os._exit before any finalizer: see docs/fork-safety.md, Celery.)
    pytest.importorskip("billiard")
    run(collector_process, tmp_path, "fork", "billiard", tasks=4)


@pytest.mark.fork
@pytest.mark.timeout(240)
def test_pool_terminate_always_returns_under_load(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    # Issue #19: terminate() hung now and then on a worker whose main thread waits in C
    # for the task queue's lock when SIGTERM comes, so that its Python handler never ran.
    # A busy neighbour makes that timing common; every terminate() must return.
    log = tmp_path / "outcomes.jsonl"
    env = h.script_env(collector_process.url, log)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        result = h.run_script("pool_terminate_rounds.py", str(ROUNDS), env=env, timeout=200)
    finally:
        burner.kill()
        burner.wait()
    assert result["hangs"] == [], f"terminate() hung in rounds {result['hangs']}"
    assert not h.errors_in(log), h.errors_in(log)
    h.assert_delivered_once(collector_process, result["tags"])
    assert len(result["tags"]) == 1 + (ROUNDS + 1) // 2 * 4
