"""A background process in its own session: its output in a log, signalled by PID,
SIGKILLed as a whole group. Used as it is for what is not an HTTP server (redis-server,
a Celery worker), and by ``server.ServerProcess`` under an HTTP server (which adds the
wait for ``/healthz`` and the graceful stop)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


class SessionProcess:
    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its children (a pool) share its process group
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def running(self) -> bool:
        return self._proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process only (not its group), as an operator would."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signum)

    def wait(self, timeout: float) -> int:
        """Its exit status; raises ``subprocess.TimeoutExpired`` after ``timeout``."""
        return self._proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole group (children outlive a dead parent); idempotent."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)

    def log(self) -> str:
        return read_log(self.log_path)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(read_log(path).splitlines()[-lines:])
