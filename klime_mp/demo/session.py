"""A background process that is not an HTTP server (redis-server, a Celery worker): in
its own session, its output in a log, signalled by PID, SIGKILLed as a whole group.

``server.ServerProcess`` is the HTTP server's counterpart (it waits for ``/healthz``)."""

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
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
