"""The registry's own contracts (klime_mp/lifecycle/forksafe.py), mostly within one process.

What the fork, multiprocessing and exit scenarios cannot pin down: they run on real
PIDs, which a fresh child gets above its parent's, and their clients only ever use
part of the registry. Here the PID source is replaced (``forksafe.getpid``) to reach
the cases a long-running machine does see: PIDs wrap around, so a child may get a
lower PID than its parent, or the PID its dead grandparent had. The signal cases run
in real child processes. Each test here kills mutants of forksafe.py that the scenario
tests let through (docs/testing.md, "forksafe.py: cosmic-ray").
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import fork_helpers as h
import pytest
from conftest import CollectorProcess

from klime_mp.lifecycle import forksafe

LOWER_PID = 2  # below any PID the test runner has (1 is init's)
HIGHER_PID = 4_000_000_000  # above Linux's pid_max


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


class Exits:
    """An ``on_exit`` that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[FakeState, float | None]] = []

    def __call__(self, value: FakeState, budget: float | None) -> None:
        self.calls.append((value, budget))


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A registry of this test's own: other tests' clients in this xdist worker are
    # neither flushed nor rebuilt here.
    live: weakref.WeakSet[forksafe.ProcessLocal[FakeState]] = weakref.WeakSet()
    monkeypatch.setattr(forksafe, "_live", live)
    monkeypatch.setattr(forksafe, "_owned", set())
    monkeypatch.setattr(forksafe, "_locks_by_pid", {})
    monkeypatch.setattr(forksafe, "exit_flushed_pid", 0)
    yield


@pytest.mark.parametrize("new_pid", [LOWER_PID, HIGHER_PID], ids=["lower", "higher"])
def test_a_value_is_used_and_flushed_only_by_the_pid_that_built_it(
    monkeypatch: pytest.MonkeyPatch, new_pid: int
) -> None:
    exits = Exits()
    local = forksafe.ProcessLocal(FakeState, exits)
    parent = local.get()
    monkeypatch.setattr(forksafe, "getpid", lambda: new_pid)
    assert local.peek() is None, "the parent's value is invisible under another PID"
    assert forksafe.owned_values() == []
    forksafe.shut_down_owned()
    assert exits.calls == [], "a process must never flush its parent's value"
    child = local.get()
    assert child is not parent and parent.abandoned and not child.abandoned
    assert local.get() is child and forksafe.owned_values() == [child]


def test_a_value_that_is_false_is_still_the_parents_to_abandon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Empty(FakeState):
        def __len__(self) -> int:  # a state that is a container, empty: false
            return 0

    local = forksafe.ProcessLocal(Empty, Exits())
    parent = local.get()
    monkeypatch.setattr(forksafe, "getpid", lambda: HIGHER_PID)  # a fork without hooks
    child = local.get()
    assert parent.abandoned
    forksafe._after_fork_in_child()  # and a fork that ran them
    monkeypatch.setattr(forksafe, "getpid", lambda: HIGHER_PID + 1)
    local.get()
    assert child.abandoned


class WatchedLock:
    """The process lock, telling when a thread has come to take it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.second_caller = threading.Event()
        self._callers = 0

    def __enter__(self) -> None:
        self._callers += 1  # under the GIL; only two threads here
        if self._callers == 2:
            self.second_caller.set()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_two_threads_first_use_builds_one_value() -> None:
    # The second thread finds the value missing, then waits for the lock while the
    # first one builds: once it has the lock it must take that value, not build (and
    # abandon the first thread's) another.
    lock = WatchedLock()
    forksafe._locks_by_pid[forksafe.getpid()] = lock  # type: ignore[assignment]
    building, go = threading.Event(), threading.Event()
    built: list[FakeState] = []

    def factory() -> FakeState:
        built.append(FakeState())
        building.set()
        assert go.wait(10), "the second thread never came for the lock"
        return built[-1]

    local = forksafe.ProcessLocal(factory, Exits())
    got: list[FakeState] = []
    threads = [threading.Thread(target=lambda: got.append(local.get())) for _ in range(2)]
    threads[0].start()
    assert building.wait(10)  # the first thread is in the factory, holding the lock
    threads[1].start()
    assert lock.second_caller.wait(10)
    go.set()
    for thread in threads:
        thread.join(10)
    assert len(built) == 1 and got == [built[0], built[0]] and not built[0].abandoned


def test_after_the_fork_hook_the_parents_value_is_gone_even_under_its_pid() -> None:
    # A grandchild may be given the PID its grandparent had (it died, the PID was
    # reused): the values it inherited still hold the grandparent's locks.
    local = forksafe.ProcessLocal(FakeState, Exits())
    parent = local.get()
    forksafe._after_fork_in_child()
    assert local.peek() is None and forksafe.owned_values() == []
    child = local.get()
    assert child is not parent and parent.abandoned


def test_a_parent_state_whose_abandon_fails_does_not_fail_the_child(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeState):
        def abandon(self) -> None:
            raise OSError("bad file descriptor")

    local = forksafe.ProcessLocal(Broken, Exits())
    local.get()
    monkeypatch.setattr(forksafe, "getpid", lambda: HIGHER_PID)
    with caplog.at_level(logging.DEBUG, logger="klime_mp.lifecycle.forksafe"):
        child = local.get()
    assert isinstance(child, Broken)
    [record] = [r for r in caplog.records if "parent's state" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is OSError


def test_exit_if_late_flushes_only_after_this_processs_exit_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits = Exits()
    local = forksafe.ProcessLocal(FakeState, exits)
    value = local.get()
    local.exit_if_late()
    assert exits.calls == [], "no exit flush has run: the value keeps its events"
    monkeypatch.setattr(forksafe, "exit_flushed_pid", HIGHER_PID)  # another process's
    local.exit_if_late()
    assert exits.calls == []
    monkeypatch.setattr(forksafe, "exit_flushed_pid", forksafe.getpid())
    local.exit_if_late()
    assert exits.calls == [(value, None)]


def test_shut_down_owned_gives_each_value_what_is_left_of_the_budget() -> None:
    exits = Exits()
    locals_ = [forksafe.ProcessLocal(FakeState, exits) for _ in range(2)]
    for local in locals_:
        local.get()
    forksafe.shut_down_owned(1000.0)
    budgets = [budget for _, budget in exits.calls]
    assert len(budgets) == 2, budgets
    assert all(budget is not None and 999.0 < budget <= 1000.0 for budget in budgets), budgets
    assert forksafe.owned_values() == [], "shut down: nothing owned until the next use"


def test_a_spent_budget_reaches_on_exit_as_zero_not_negative() -> None:
    exits = Exits()
    forksafe.ProcessLocal(FakeState, exits).get()
    forksafe.shut_down_owned(0.0)
    assert [budget for _, budget in exits.calls] == [0.0]


def test_without_a_budget_on_exit_gets_none() -> None:
    exits = Exits()
    value = forksafe.ProcessLocal(FakeState, exits).get()
    forksafe.shut_down_owned()
    assert exits.calls == [(value, None)]


@pytest.mark.parametrize("error", [ValueError, OSError])
def test_no_signals_here_means_no_sigterm_flush_not_an_error(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    # An embedded or sub-interpreter refuses signal calls; building a client there
    # must still work.
    asked: list[int] = []

    def refuse(signum: int) -> None:
        asked.append(signum)
        raise error("signal only works in main thread of the main interpreter")

    monkeypatch.setattr(signal, "getsignal", refuse)
    forksafe._install_sigterm_flush()  # must not raise
    assert asked == [signal.SIGTERM], "not reached: this test must run in the main thread"


PLAIN_PROCESS = """
import signal
import klime_mp
client = klime_mp.KlimeClient("k", endpoint="http://127.0.0.1:9", flush_interval=60_000)
client.track("e", user_id="u")  # builds this process's worker
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
import os
os._exit(0)
"""


def test_a_process_multiprocessing_did_not_start_keeps_sigterms_default_action() -> None:
    # The SIGTERM flush is for multiprocessing children only: anywhere else SIGTERM
    # is the application's (or its server's) to handle.
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_PROCESS], capture_output=True, text=True, timeout=20
    )
    assert out.stdout.split() == ["True"], out.stderr


SIGTERM_DURING_EXIT_FLUSH = """
import os, signal, sys, time
from klime_mp.lifecycle import forksafe, sigterm
forksafe._install_sigterm_flush()  # the handler and its watch, as in a pool worker
# The PID whose exit flush is running: this process's own, another's, or none (0).
forksafe._exit_flush_running = os.getpid() if sys.argv[1] == "self" else int(sys.argv[1])
os.kill(os.getpid(), signal.SIGTERM)
# Still alive: the flush under way is left to finish, even by a second SIGTERM.
os.kill(os.getpid(), signal.SIGTERM)
print("alive")
sys.stdout.flush()
# The watch stands down too: it does not end the process while that flush runs.
time.sleep(4 * sigterm.SIGTERM_GRACE_S)
print("alive")
sys.stdout.flush()
forksafe._exit_flush_running = 0  # the flush is over: a SIGTERM now kills
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(10)
print("survived")
os._exit(0)
"""


@pytest.mark.parametrize(
    ("flushing", "outcome"),
    [
        # Its own flush is under way: let it finish, then die of the next SIGTERM.
        ("self", (-signal.SIGTERM, ["alive", "alive"])),
        ("0", (-signal.SIGTERM, [])),  # none: flush, then die of SIGTERM
        # Another PID's (a child forked during its parent's exit flush inherits that
        # PID there): not this process's flush, even when the PID is higher.
        (str(HIGHER_PID), (-signal.SIGTERM, [])),
    ],
    ids=["own", "none", "another"],
)
def test_sigterm_during_an_exit_flush_lets_only_this_processs_own_finish(
    flushing: str, outcome: tuple[int, list[str]]
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_EXIT_FLUSH, flushing],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (out.returncode, out.stdout.split()) == outcome, out.stderr


SIGTERM_NESTED_IN_THE_HANDLER = """
import os, signal, time
from klime_mp.lifecycle import sigterm
sent = []

def exiting():
    if not sent:  # the second SIGTERM lands just as the first one's handler begins
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    return False

def flush():
    time.sleep(0.5)
    print("flushed", flush=True)

sigterm.install(flush, lambda: 5.0, exiting)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(10)
print("survived", flush=True)
"""


def test_a_second_sigterm_inside_the_first_handler_does_not_cut_its_flush_short() -> None:
    # Hypercorn's master terminate()s a worker twice within milliseconds; Python 3.13
    # runs the second handler inside the first, before its flush has begun.
    out = subprocess.run(
        [sys.executable, "-c", SIGTERM_NESTED_IN_THE_HANDLER],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout.split()) == (-signal.SIGTERM, ["flushed"]), out.stderr


KEEP_SIGTERM = """
import json, multiprocessing, os, signal
import klime_mp
from klime_mp.lifecycle import forksafe, sigterm

def own_handler(signum, frame):
    pass

SET = {"default": signal.SIG_DFL, "ignored": signal.SIG_IGN, "own handler": own_handler}

def child(conn, kind):
    signal.signal(signal.SIGTERM, SET[kind])
    client = klime_mp.KlimeClient("k", endpoint="http://127.0.0.1:9", flush_interval=60_000)
    client.track("e", user_id="u")  # builds this child's worker and exit hooks
    now = signal.getsignal(signal.SIGTERM)
    conn.send("flush" if now is sigterm._flush_then_terminate else "kept" if now is SET[kind]
              else repr(now))
    os._exit(0)  # nothing to send: port 9 refuses

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    seen = {}
    for kind in SET:
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=child, args=(theirs, kind))
        process.start()
        seen[kind] = ours.recv() if ours.poll(20) else "no answer"
        process.join(20)
    print(json.dumps(seen))
"""


def test_a_multiprocessing_child_keeps_a_sigterm_action_someone_else_set(
    tmp_path: Path,
) -> None:
    script = tmp_path / "keep_sigterm.py"
    script.write_text(KEEP_SIGTERM)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "default": "flush",  # only the default action is replaced...
        "ignored": "kept",  # ...never an ignored SIGTERM...
        "own handler": "kept",  # ...nor the application's own handler
    }


def test_a_built_value_is_handed_out_without_the_process_lock() -> None:
    # The lock guards first use only: track() must not wait while another thread holds
    # it (building its own value, or configure() of the default client).
    local = forksafe.ProcessLocal(FakeState, Exits())
    value = local.get()
    got: list[FakeState] = []
    with forksafe.process_lock():
        reader = threading.Thread(target=lambda: got.append(local.get()), daemon=True)
        reader.start()
        reader.join(10)
        assert got == [value], "get() waited for the process lock"


BUILT_AT_IMPORT = """
import json, multiprocessing, os, sys, time
from klime_mp import KlimeClient

# Tracked while this module is imported: in a spawn or forkserver child that is before
# the child counts as one (multiprocessing.parent_process() is still None).
CLIENT = KlimeClient("key", endpoint=os.environ["KLIME_TEST_ENDPOINT"], flush_interval=60_000)
CLIENT.track("Imported", {"tag": f"imported-{os.getpid()}"}, user_id="u")


def busy(ready):
    ready.set()
    time.sleep(60)


def nothing(ready):
    ready.set()


if __name__ == "__main__":
    method, ending = sys.argv[1], sys.argv[2]
    ctx = multiprocessing.get_context(method)
    ready = ctx.Event()
    child = ctx.Process(target=busy if ending == "terminated" else nothing, args=(ready,))
    child.start()
    assert ready.wait(30), "the child never started its task"
    if ending == "terminated":
        child.terminate()
    child.join(30)
    # Died of SIGTERM (after its flush), or returned.
    assert child.exitcode == (-15 if ending == "terminated" else 0), child.exitcode
    print(json.dumps({"tags": [f"imported-{os.getpid()}", f"imported-{child.pid}"]}))
"""


@pytest.mark.fork
@pytest.mark.parametrize("ending", ["terminated", "returned"])
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_child_flushes_what_it_tracked_while_importing_the_main_module(
    collector_process: CollectorProcess, tmp_path: Path, method: str, ending: str
) -> None:
    # Its only client was built during that import, so no later first use hooks it.
    # A spawn child (Python 3.10+ runs no after-fork hook in it) needs its SIGTERM
    # flush installed during the import itself; a forkserver child then has the
    # finalizers registered so far cleared, and its exit flush (it leaves through
    # os._exit) comes back only through the after-fork hook.
    script = tmp_path / "built_at_import.py"
    script.write_text(BUILT_AT_IMPORT)
    env = h.script_env(collector_process.url, tmp_path / "outcomes.jsonl")
    out = subprocess.run(
        [sys.executable, str(script), method, ending],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    h.assert_delivered_once(collector_process, json.loads(out.stdout)["tags"])


# -- a SIGTERM whose handler the main thread never comes back to run (issue #19) --------

STUCK_MAIN = """
import json, multiprocessing, os, signal, sys, threading, time
from klime_mp import KlimeClient

def child(held, ready):
    client = KlimeClient("key", endpoint=os.environ["KLIME_TEST_ENDPOINT"], flush_interval=60_000)
    client.track("Stuck", {"tag": f"stuck-{os.getpid()}"}, user_id="u")  # its own client
    main = threading.main_thread().ident

    def signal_while_main_waits():
        # The main thread is inside the C call of the line below, without the GIL: in
        # sem_wait. A SIGTERM taken by this thread marks the Python handler as due, and
        # sem_wait, never interrupted, keeps the main thread from ever running it. (The
        # kernel's choice under load, or a SIGTERM just before the wait began, does the
        # same: see forksafe.)
        deadline = time.monotonic() + 20
        while sys._current_frames()[main].f_lineno != WAIT_LINE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=signal_while_main_waits).start()
    ready.set()
    held.acquire()  # WAIT_LINE: as an idle pool worker waits for the task queue's lock
    os._exit(0)

WAIT_LINE = next(n for n, line in enumerate(open(__file__), 1) if line.strip().startswith("held."))

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    held, ready = ctx.Lock(), ctx.Event()
    held.acquire()  # never released: only a signal ends the child's wait
    process = ctx.Process(target=child, args=(held, ready))
    process.start()
    assert ready.wait(30)
    process.join(30)
    if process.exitcode is None:
        process.kill()
        process.join()
    print(json.dumps({"exitcode": process.exitcode, "tags": [f"stuck-{process.pid}"]}))
"""


@pytest.mark.fork
def test_sigterm_ends_a_child_whose_main_thread_never_comes_back_to_the_handler(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    script = tmp_path / "stuck_main.py"
    script.write_text(STUCK_MAIN)
    env = h.script_env(collector_process.url, tmp_path / "outcomes.jsonl")
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["exitcode"] == -signal.SIGTERM, out.stderr  # not hung (then killed: -9)
    h.assert_delivered_once(collector_process, result["tags"])  # flushed before it died


INHERITED = """
import json, multiprocessing, os, signal, threading
from klime_mp import KlimeClient

def look(_):
    default = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    return default, sorted(t.name for t in threading.enumerate() if t.name.startswith("klime"))

def parent(conn):
    client = KlimeClient("key", endpoint="http://127.0.0.1:9", flush_interval=60_000)
    client.track("e", user_id="u")  # this process's SIGTERM flush, watch and sender
    mine = look(None)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        conn.send({"parent": mine, "workers": pool.map(look, range(4), chunksize=1)})
    os._exit(0)  # nothing to send: port 9 refuses

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=parent, args=(theirs,))
    process.start()
    print(json.dumps(ours.recv() if ours.poll(30) else "no answer"))
    process.join(30)
"""


@pytest.mark.fork
def test_a_pool_worker_without_a_client_keeps_sigterms_default_action(tmp_path: Path) -> None:
    # Its parent (a multiprocessing child) has a client, and so a SIGTERM flush: the
    # idle workers, which track nothing, must die of SIGTERM exactly as without klime_mp
    # (an inherited Python handler could leave one blocked in the task queue's lock).
    script = tmp_path / "inherited.py"
    script.write_text(INHERITED)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "parent": [False, ["klime-sender", "klime-sigterm-watch"]],
        "workers": [[True, []]] * 4,
    }
