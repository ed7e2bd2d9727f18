"""A Celery prefork worker running the example's actions as tasks, behind a small HTTP
front, with redis-server as broker and result backend (three processes, each in its
own session).

Pool processes are recycled every ``MAX_TASKS_PER_CHILD`` tasks, as many deployments
do to bound leaks: the demo shows that recycled pool processes lose nothing. Celery,
redis-py and redis-server are looked up only when the demo runs."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..server import (
    HOST,
    READY_TIMEOUT_S,
    START_ATTEMPTS,
    STOP_TIMEOUT_S,
    WORKERS_TIMEOUT_S,
    DemoError,
    ServerProcess,
    child_pids,
    free_port,
    wait_for_workers,
)
from ..session import SessionProcess
from . import example_dir

MAX_TASKS_PER_CHILD = 10  # small enough that the demo's load recycles pool processes
OTHERS_STOP_TIMEOUT_S = 10.0  # the front and redis-server, once the worker is down


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise DemoError(
            "--server celery needs redis-server (the broker) on the PATH: "
            "apt-get install redis-server (or brew install redis)"
        )
    return found


def check_packages() -> None:
    """Celery and redis-py, imported here and not at import: the demo runs without."""
    for module, package in (("celery", "celery"), ("redis", "redis")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise DemoError(
                f"--server celery needs the {package} package: pip install 'celery[redis]'"
            ) from None


class CeleryServer:
    """redis-server, then ``celery worker``, then the front; stopped in reverse."""

    def __init__(self, workers: int, workdir: Path, env: dict[str, str]) -> None:
        self._workers = workers
        self._workdir = workdir
        self._env = dict(env)
        # Both programs import the modules of the example directory by name.
        path = [str(example_dir()), *filter(None, [env.get("PYTHONPATH")])]
        self._env["PYTHONPATH"] = os.pathsep.join(path)
        self._redis: SessionProcess | None = None
        self._celery: SessionProcess | None = None
        # The front shares this dict: it sees the broker URL that start() adds to it.
        self._front = ServerProcess(self._front_argv, self._env, workdir / "front.log")

    @property
    def url(self) -> str:
        return self._front.url

    def start(self) -> CeleryServer:
        try:
            redis_url = self._start_redis()
            self._env.update(CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url)
            self._start_celery()
            self._front.start()  # ready once a ping task makes the round trip
        except BaseException:
            self.kill()
            raise
        return self

    def _start_redis(self) -> str:
        for _ in range(START_ATTEMPTS):
            port = free_port()  # may be taken before redis-server binds it: then retry
            argv = [redis_binary(), "--port", str(port), "--bind", HOST]
            # In memory only: no dump at stop, no append-only file, nothing left behind.
            argv += ["--save", "", "--appendonly", "no", "--dir", str(self._workdir)]
            self._redis = SessionProcess(argv, self._env, self._workdir / "redis.log")
            deadline = time.monotonic() + READY_TIMEOUT_S
            while self._redis.running() and time.monotonic() < deadline:
                if _redis_answers(port):
                    return f"redis://{HOST}:{port}/0"
                time.sleep(0.02)
            self._redis.kill()
            if "in use" not in self._redis.log():
                break
        raise DemoError(f"redis-server did not start; its log ends with:\n{self._log_tail()}")

    def _start_celery(self) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-P", "prefork"]
        argv += ["-c", str(self._workers), "--max-tasks-per-child", str(MAX_TASKS_PER_CHILD)]
        # No gossip, mingle or heartbeat: one worker alone, and a faster start.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        argv += ["--loglevel", "INFO", "-n", "klime-demo@%h"]
        log = self._workdir / "celery.log"
        self._celery = SessionProcess(argv, self._env, log, cwd=self._workdir)
        deadline = time.monotonic() + READY_TIMEOUT_S
        # Celery logs "<name> ready." once it consumes; no other outside sign of it.
        while " ready." not in self._celery.log():
            if not self._celery.running() or time.monotonic() > deadline:
                raise DemoError(f"celery did not start; its log ends with:\n{self._log_tail()}")
            time.sleep(0.05)

    def _front_argv(self, port: int) -> list[str]:
        return [sys.executable, str(example_dir() / "celery_front.py"), "--port", str(port)]

    def worker_pids(self) -> set[int]:
        """The pool processes now: the Celery main process's children (they run the
        tasks and track the events); not the main process, the front or redis."""
        celery = self._celery
        return child_pids(celery.pid) if celery is not None and celery.running() else set()

    def wait_for_workers(self, count: int, timeout: float = WORKERS_TIMEOUT_S) -> set[int]:
        return wait_for_workers(self.worker_pids, count, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Warm shutdown (SIGTERM to the Celery main process: running tasks finish and
        each pool process sends its queued events), then the front and redis-server.
        The Celery main process's exit status."""
        assert self._celery is not None, "not started"
        try:
            self._celery.signal(signal.SIGTERM)
            try:
                status = self._celery.wait(timeout)
            except subprocess.TimeoutExpired:
                raise DemoError(
                    f"celery did not stop within {timeout:.0f} s; its log ends with:\n"
                    f"{self._celery.log_tail()}"
                ) from None
            self._front.stop(OTHERS_STOP_TIMEOUT_S)
            if self._redis is not None:
                self._redis.signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._redis.wait(OTHERS_STOP_TIMEOUT_S)
            return status
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL every process group (the pool with the main process); idempotent."""
        self._front.kill()
        for process in (self._celery, self._redis):
            if process is not None:
                process.kill()

    def _log_tail(self) -> str:
        tails = []
        for process in (self._redis, self._celery):
            if process is not None:
                tails.append(f"--- {process.log_path.name}\n{process.log_tail()}")
        return "\n".join(tails)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class CeleryLauncher:
    title = "Celery (prefork)"

    def check(self) -> None:
        redis_binary()
        check_packages()

    def server(self, workers: int, workdir: Path, env: dict[str, str]) -> CeleryServer:
        return CeleryServer(workers, workdir, env)


LAUNCHER = CeleryLauncher()
