"""Shared by the reliability tests: the chaos fault plan, scripts run in their own
process group, and the figures each run reports.

Set ``KLIME_LONG_CHAOS=1`` for the long chaos runs (minutes instead of seconds) and
``KLIME_RELIABILITY_REPORT_DIR=<dir>`` to keep every run's figures as JSON files there
(``python tests/reliability/report.py <dir>`` prints them as the table of
docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from klime_mp.collector import CollectorStats, FaultPlan

LONG = os.environ.get("KLIME_LONG_CHAOS") == "1"
REPORT_DIR_ENV = "KLIME_RELIABILITY_REPORT_DIR"
HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
REPO_ROOT = HERE.parent.parent
WRITE_KEY = "reliability-key"

# The chaos: a fifth of the batches answered 503, one in twenty connections
# dropped; half of those before the batch is stored, half after (the client cannot
# tell which, so it must resend, and the second kind makes a raw duplicate).
CHAOS_PLAN = FaultPlan(seed=6, error_rate=0.20, drop_rate=0.025, drop_after_store_rate=0.025)

# Client settings of the chaos runs. With a failure rate p per attempt a batch is lost
# after all its attempts with probability p**attempts: 0.25**5 = 1e-3 with the default
# 5, 0.25**12 = 6e-8 here. A worker that exits while the faults last has only its exit
# budget, though: shutdown_timeout, within half of Gunicorn's --graceful-timeout (20 s
# in the chaos run). Backoff from 50 ms, doubled with jitter, fits about 8 failures in
# a row into 9 s: 0.25**9 = 4e-6 per batch flushed at exit. A batch that still fails
# is reported (on_error, the log, stats().dropped["shutdown_timeout"]), never silent.
CHAOS_CLIENT: dict[str, Any] = {
    "retry_max_attempts": 12,
    "retry_initial_delay": 50,  # ms
    "flush_interval": 200,  # ms
    "shutdown_timeout": 9.0,  # s
    # The official SDK's batch size, not our 100: five times the requests, so that each
    # kind of fault (drop_after_store at 2.5 %) hits a short run at least once (65
    # requests at 100 missed it in about 1 run in 5).
    "max_batch_size": 20,
}
GUNICORN_CHAOS_TIMEOUTS = ("--graceful-timeout", "20", "--timeout", "30")

# What a client logs for events it gave up on (worker.py), with their count.
LOST_LOG_LINE = re.compile(r"Klime: (\d+) events (?:not delivered|not sent before|in flight at)")


def reported_lost(log: str) -> int:
    return sum(int(count) for count in LOST_LOG_LINE.findall(log))


def script_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.update(PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost", **extra)
    return env


class Script:
    """``tests/reliability/scripts/<name>`` in its own session, so every process it
    forks dies with it; talks JSON lines over stdin/stdout.

    Its stderr goes to a file, not a pipe: a pipe nobody reads while the script runs
    fills at 64 KiB and blocks every process that logs. A script that registers
    ``faulthandler`` on SIGUSR1 leaves the stacks of its processes (forked ones inherit
    the handler) in that file when a read or wait times out."""

    def __init__(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  # closed by kill()
        self.proc: subprocess.Popen[str] = subprocess.Popen(
            [sys.executable, str(SCRIPTS / name), *args],
            env=env if env is not None else script_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self.name = name
        self.started = time.monotonic()

    def read(self, timeout: float = 75.0) -> dict[str, Any]:
        """The script's next JSON line, waiting at most ``timeout`` seconds (below the
        test's own timeout, so a hang reports the script's stacks)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self._hung(f"no line within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.kill()
            raise AssertionError(f"{self.name} ended early:\n{self.stderr()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._hung(f"still running after {timeout:.0f} s")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        self._stderr.seek(0)
        return self._stderr.read()[-20000:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _hung(self, what: str) -> NoReturn:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGUSR1)  # faulthandler's dump, where set up
        time.sleep(1.0)  # the dumps are written from signal handlers: no event to wait on
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        raise AssertionError(f"{self.name}: {what}:\n{self.stderr()}")


def assert_duplicates_explained(stats: CollectorStats) -> None:
    """Raw duplicates only where a dropped answer made a resend unavoidable."""
    assert stats.rejected == 0, stats
    assert stats.received == stats.stored + stats.duplicates, stats  # a fresh database
    assert stats.duplicates <= stats.unacknowledged, stats


def fault_figures(stats: CollectorStats) -> dict[str, Any]:
    return {
        "batch_requests": stats.requests,
        "faults_injected": dict(sorted(stats.faults_injected.items())),
        "received_raw": stats.received,
        "stored": stats.stored,
        "duplicates_raw": stats.duplicates,
        "unacknowledged": stats.unacknowledged,
    }


def write_report(name: str, figures: dict[str, Any]) -> None:
    """Print the run's figures (seen with ``-rP``/``-s``) and keep them when asked."""
    figures = {"name": name, "long": LONG, "python": sys.version.split()[0], **figures}
    text = json.dumps(figures, indent=1, sort_keys=False)
    print(text)
    folder = os.environ.get(REPORT_DIR_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(text + "\n")
