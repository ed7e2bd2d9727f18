"""Celery prefork: every task's event arrives once, through recycling and warm shutdown.

A real ``celery worker`` (prefork pool, 2 processes) against a real Redis broker, serving
tests/apps/celery_app.py, which only calls ``klime_mp.configure()`` at import. Recycled
and stopped pool processes leave through ``os._exit``: only klime_mp's automatic
``worker_process_shutdown`` connection sends their queued events.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp.collector import Collector
from klime_mp.demo import free_port, server_env

pytestmark = pytest.mark.server

celery = pytest.importorskip("celery")
pytest.importorskip("redis")

APPS = Path(__file__).resolve().parent / "apps"
REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")
STOP_TIMEOUT_S = 60.0


class RedisServer:
    """redis-server on a free loopback port, in memory only."""

    def __init__(self, tmp_path: Path) -> None:
        assert REDIS is not None
        self.port = free_port()
        self._proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 20
        while not self._answers():
            assert self._proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait(10)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path)
    try:
        yield server.url
    finally:
        server.stop()


class CeleryWorker:
    """``celery worker`` for tests/apps/celery_app.py in its own process group."""

    def __init__(
        self, tmp_path: Path, broker: str, endpoint: str, *options: str, hold: bool = False
    ) -> None:
        self.log_path = tmp_path / "celery.log"
        env = server_env(endpoint)
        self.done_dir = tmp_path / "done"
        self.done_dir.mkdir(exist_ok=True)
        env.update(CELERY_BROKER_URL=broker, PYTHONPATH=str(APPS))
        env["TASKS_DONE_DIR"] = str(self.done_dir)
        if hold:
            env["HOLD_EVENTS"] = "1"
        argv = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork"]
        argv += ["--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        argv += ["--without-heartbeat", "-n", f"klime-{os.getpid()}@%h", *options]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=APPS,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def warm_shutdown(self) -> int:
        """SIGTERM to the main process, as a process manager sends; its exit status."""
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"celery did not stop in time:\n{self.log_tail()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def start_worker(tmp_path: Path, redis_url: str, collector: Collector) -> Iterator[Any]:
    started: list[CeleryWorker] = []

    def start(*options: str, hold: bool = False) -> CeleryWorker:
        worker = CeleryWorker(tmp_path, redis_url, collector.url, *options, hold=hold)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def run_tasks(worker: CeleryWorker, broker: str, total: int) -> Counter[int]:
    """Send ``total`` tasks and wait until each has run: tasks run by pool process PID."""
    sender = celery.Celery("klime-test", broker=broker)
    try:
        for n in range(total):
            sender.send_task("celery_app.work", args=[n])
    finally:
        sender.close()
    deadline = time.monotonic() + 90
    while len(list(worker.done_dir.iterdir())) < total or any(
        path.suffix == ".tmp" for path in worker.done_dir.iterdir()
    ):
        assert time.monotonic() < deadline, f"tasks did not all run:\n{worker.log_tail()}"
        time.sleep(0.05)
    return Counter(int(path.read_text()) for path in worker.done_dir.iterdir())


def assert_every_event_once(collector: Collector, total: int, by_pid: Counter[int]) -> None:
    collector.wait_for(total, 10.0)
    stats = collector.stats()
    tracked: Counter[int] = Counter()
    numbers: Counter[int] = Counter()
    for event in collector.events():
        tracked[int(event["properties"]["worker_pid"])] += 1
        numbers[int(event["properties"]["n"])] += 1
    print(f"celery: {total} tracked, {stats.stored} stored, {stats.duplicates} duplicates")
    assert stats.duplicates == 0
    assert stats.stored == total
    assert numbers == Counter(range(total))
    assert tracked == by_pid


@needs_redis
def test_recycled_children_and_warm_shutdown_lose_nothing(
    start_worker: Any, redis_url: str, collector: Collector
) -> None:
    worker = start_worker("-c", "2", "--max-tasks-per-child", "3")
    by_pid = run_tasks(worker, redis_url, 30)
    assert worker.warm_shutdown() == 0, worker.log_tail()
    assert len(by_pid) >= 10  # 3 tasks per child life: children were recycled
    assert_every_event_once(collector, 30, by_pid)


@needs_redis
def test_children_recycled_for_memory_lose_nothing(
    start_worker: Any, redis_url: str, collector: Collector
) -> None:
    # 1 KiB: every child's resident size is above it after its first task, so billiard
    # recycles each child after every task (it checks after each one): deterministic.
    worker = start_worker("-c", "2", "--max-memory-per-child", "1")
    by_pid = run_tasks(worker, redis_url, 8)
    assert worker.warm_shutdown() == 0, worker.log_tail()
    assert len(by_pid) >= 4  # about one task per child life (8 seen in every local run)
    assert_every_event_once(collector, 8, by_pid)


@needs_redis
def test_warm_shutdown_without_recycling_loses_nothing(
    start_worker: Any, redis_url: str, collector: Collector
) -> None:
    # Events held in the queue until exit: only the exit path can deliver them.
    worker = start_worker("-c", "2", hold=True)
    by_pid = run_tasks(worker, redis_url, 40)
    assert worker.warm_shutdown() == 0, worker.log_tail()
    assert_every_event_once(collector, 40, by_pid)


def test_connecting_twice_leaves_one_receiver() -> None:
    from celery.signals import worker_process_shutdown

    from klime_mp import celery as klime_celery

    def ours() -> list[Any]:
        return [
            r for r in worker_process_shutdown.receivers if r[0][0] == klime_celery.DISPATCH_UID
        ]

    assert klime_celery.connect() is True
    assert klime_celery.connect() is True
    assert len(ours()) == 1


def test_klime_mp_never_imports_celery_itself() -> None:
    script = (
        "import sys, klime_mp\n"
        "klime_mp.configure('key', endpoint='http://127.0.0.1:9', send=False)\n"
        "klime_mp.track('Started', user_id='usr_1')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'uwsgi')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
