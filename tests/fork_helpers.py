"""Shared by the fork, multiprocessing and exit tests, and by the processes they start.

Two sides:

* In the scripts under ``tests/scripts/`` and every process they fork or spawn:
  ``make_client()`` builds a client for the collector named by ``KLIME_TEST_ENDPOINT``
  whose callbacks append one JSON line per batch outcome (with the PID) to
  ``KLIME_TEST_LOG``; ``CLIENT`` is such a client created when this module is imported,
  which is how a spawn child gets one; ``track_task`` is a pool task.
* In the tests: ``run_script`` runs a scenario in its own process group (so no forked
  child can outlive a timeout) and returns its JSON report; ``assert_delivered_once``
  checks the collector against the tags the scenario says it tracked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Protocol

from klime_mp import BatchResponse, KlimeClient

ENDPOINT_ENV = "KLIME_TEST_ENDPOINT"
LOG_ENV = "KLIME_TEST_LOG"
WRITE_KEY = "test-write-key"
EVENT = "Fork Test"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
# Flush interval of the clients under test: long, so events stay queued until a flush
# or an exit flush sends them, which is what these tests are about.
LONG_INTERVAL_MS = 60_000


# -- inside the processes under test -----------------------------------------------------


def record(kind: str, **fields: Any) -> None:
    """Append one JSON line to the outcome log; one O_APPEND write, so lines from
    many processes never interleave."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = json.dumps({"kind": kind, "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _on_success(response: BatchResponse) -> None:
    record("success", accepted=response.accepted, failed=response.failed)


def _on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
    tags = [event.get("properties", {}).get("tag") for event in events]
    record("error", error=repr(error), count=len(events), tags=tags)


def make_client(**options: Any) -> KlimeClient:
    options.setdefault("endpoint", os.environ[ENDPOINT_ENV])
    options.setdefault("flush_interval", LONG_INTERVAL_MS)
    options.setdefault("on_error", _on_error)
    options.setdefault("on_success", _on_success)
    return KlimeClient(WRITE_KEY, **options)


def track(client: KlimeClient, tag: str) -> str:
    client.track(EVENT, {"tag": tag, "pid": os.getpid()}, user_id="usr_fork")
    return tag


# The spawn start method re-imports this module in each child: that is where a spawn
# child's client comes from, as it would from an application module.
CLIENT: KlimeClient | None = make_client() if os.environ.get(ENDPOINT_ENV) else None


def track_task(tag: str) -> int:
    """A pool task: track one event on the module-level client."""
    assert CLIENT is not None, f"{ENDPOINT_ENV} is not set"
    track(CLIENT, tag)
    return os.getpid()


def track_then_hang(tag: str, tracked: Any) -> None:
    """A process task that is busy (sleeping) with a queued event when terminated."""
    track_task(tag)
    tracked.set()
    time.sleep(30)


class ChildExit(SystemExit):
    """A forked child leaving normally; passes through any ``fork()`` frame above it
    (a grandchild unwinds through its parent's ``child`` function too)."""


def fork(child: Callable[[], None], exit_with: str = "os._exit") -> int:
    """Fork; the child runs ``child`` and never comes back to the caller's next line.

    ``exit_with`` is how the child leaves: ``"os._exit"`` (no atexit, so ``child``
    must flush) or ``"sys.exit"``: a real normal exit, SystemExit unwinding to the top
    of the script and the interpreter running atexit, so callers fork outside any
    ``with`` or ``try`` whose cleanup belongs to the parent."""
    pid = os.fork()
    if pid:
        return pid
    try:
        signal.alarm(20)  # a hung child dies instead of hanging the test
        child()
    except ChildExit:
        raise  # a process forked inside ``child`` is leaving: not this one
    except BaseException as exc:  # report, never unwind into the parent's code
        sys.stderr.write(f"child {os.getpid()} failed: {exc!r}\n")
        os._exit(1)
    if exit_with == "sys.exit":
        raise ChildExit(0)
    os._exit(0)


def reap(pid: int) -> int:
    """Wait for a child; its exit code, or -signal."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def report(**fields: Any) -> None:
    """The scenario's result: one JSON line, the last one on stdout."""
    print(json.dumps(fields), flush=True)


# -- in the tests ------------------------------------------------------------------------


class Collector(Protocol):
    url: str

    def stats(self) -> dict[str, Any]: ...

    def events(self) -> list[dict[str, Any]]: ...


def script_env(endpoint: str, log: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env[ENDPOINT_ENV] = endpoint
    env[LOG_ENV] = str(log)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_script(
    name: str,
    *args: str,
    env: dict[str, str],
    timeout: float = 25.0,
    python_flags: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``tests/scripts/<name>`` in a new session; its JSON report."""
    return finish_script(start_script(name, *args, env=env, python_flags=python_flags), timeout)


def start_script(
    name: str, *args: str, env: dict[str, str], python_flags: Sequence[str] = ()
) -> subprocess.Popen[str]:
    command = [sys.executable, *python_flags, str(SCRIPTS / name), *args]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish_script(proc: subprocess.Popen[str], timeout: float = 25.0) -> dict[str, Any]:
    """Wait for a script; its JSON report. On a timeout the whole process group is
    killed, forked children included."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} timed out after {timeout}s\n{err}") from None
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{out}\n{err}"
    lines = out.strip().splitlines()
    assert lines, f"{proc.args} reported nothing\n{err}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = err
    return result


def free_port() -> int:
    """A port nothing listens on (connections are refused) until someone binds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def kill_group(pgid: int) -> None:
    # Stragglers (a child that outlived its parent) must not outlive the test.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_stored(collector: Collector, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while collector.stats()["stored"] < count and time.monotonic() < deadline:
        time.sleep(0.05)


def assert_delivered_once(collector: Collector, expected: Iterable[str]) -> list[dict[str, Any]]:
    """Every expected tag stored exactly once, nothing else, no duplicate receipt."""
    expected = list(expected)
    assert len(set(expected)) == len(expected), "the scenario reused a tag"
    wait_stored(collector, len(expected))
    events = collector.events()
    tags = Counter(event["properties"]["tag"] for event in events)
    missing = set(expected) - set(tags)
    unexpected = set(tags) - set(expected)
    twice = {tag: n for tag, n in tags.items() if n > 1}
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert not unexpected, f"unexpected events: {sorted(unexpected)[:5]}"
    assert not twice, f"events stored twice (new message ids): {twice}"
    ids = Counter(event["messageId"] for event in events)
    assert len(ids) == len(events)
    stats = collector.stats()
    assert stats["duplicates"] == 0, f"message ids sent twice: {stats}"
    assert stats["received"] == stats["stored"] == len(expected), stats
    return events


def errors_in(log: Path) -> list[dict[str, Any]]:
    return [line for line in read_log(log) if line["kind"] == "error"]
