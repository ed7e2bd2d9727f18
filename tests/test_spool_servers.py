"""The spool under real servers: Gunicorn workers and multiprocessing pool workers
SIGKILLed mid-run lose nothing; their siblings (or successors) send what they left."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient
from tests.conftest import CollectorProcess
from tests.servers import no_control_socket

APP = textwrap.dedent("""
    import os
    import klime_mp

    klime_mp.configure()  # KLIME_WRITE_KEY, KLIME_ENDPOINT and KLIME_SPOOL_DIR

    def app(environ, start_response):
        klime_mp.track("Request", {"path": environ["PATH_INFO"]}, user_id="u1")
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def get(url: str, deadline: float) -> int:
    """One request; the answering worker's PID. Retries while nobody listens yet."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return int(reply.read())
        except OSError:
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.05)


@pytest.mark.server
@pytest.mark.timeout(90)
def test_gunicorn_workers_sigkilled_mid_run_lose_no_event(
    tmp_path: Path, collector_process: CollectorProcess
) -> None:
    (tmp_path / "spoolapp.py").write_text(APP)
    port = free_port()
    env = dict(
        os.environ,
        KLIME_WRITE_KEY="key",
        KLIME_ENDPOINT=collector_process.url,
        KLIME_SPOOL_DIR=str(tmp_path / "spool"),
        NO_PROXY="127.0.0.1",
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:klime_mp.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", "2", "--graceful-timeout", "10"]
    argv += ["--chdir", str(tmp_path), *no_control_socket(), "spoolapp:app"]
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        for n in range(120):
            pid = get(f"http://127.0.0.1:{port}/r{n}", deadline)
            if n in (40, 80) and pid not in killed:
                os.kill(pid, signal.SIGKILL)  # events queued, some batches unsent
                killed.add(pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, (tmp_path / "gunicorn.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        log.close()

    assert killed
    assert collector_process.wait_for(120, timeout=30), collector_process.stats()
    paths = sorted(e["properties"]["path"] for e in collector_process.events())
    assert paths == sorted(f"/r{n}" for n in range(120))
    assert collector_process.stats()["stored"] == 120


_doomed_tracked: Any = None  # set in each pool worker by _remember (fork: inherited)


def _remember(tracked: Any) -> None:
    global _doomed_tracked
    _doomed_tracked = tracked


def _track_then_maybe_hang(args: tuple[str, str, int, bool]) -> int:
    endpoint, spool, task, doomed = args
    client = KlimeClient("key", endpoint, spool_dir=spool, flush_interval=60_000)
    for n in range(10):
        client.track("Task", {"task": task, "n": n}, user_id="u")
    if doomed:  # all ten on disk: say so, with this worker's PID, and wait for SIGKILL
        _doomed_tracked.put(os.getpid())
        time.sleep(60)
    return task


@pytest.mark.fork
@pytest.mark.timeout(60)
def test_a_pool_worker_sigkilled_mid_task_loses_no_event(
    tmp_path: Path, collector_process: CollectorProcess
) -> None:
    spool = str(tmp_path / "spool")
    context = multiprocessing.get_context("fork")
    tracked = context.SimpleQueue()
    pool = context.Pool(2, _remember, (tracked,))
    try:
        doomed = pool.apply_async(
            _track_then_maybe_hang, ((collector_process.url, spool, 0, True),)
        )
        # The SIGKILL lands mid-task, after all ten were tracked (not before some of them:
        # a terminate() that came first would end the task early and skip the rest).
        pid = tracked.get()
        dead = os.pidfd_open(pid)  # opened while it still runs: no PID reuse can fool it
        try:
            signal.pidfd_send_signal(dead, signal.SIGKILL)
            assert select.select([dead], [], [], 30)[0], "the doomed worker never died"
        finally:
            os.close(dead)
        survivors = pool.map(
            _track_then_maybe_hang, [(collector_process.url, spool, t, False) for t in range(1, 5)]
        )
        assert survivors == [1, 2, 3, 4]
        assert not doomed.ready()  # its worker died with it: the pool never hears back
    finally:
        pool.terminate()
        pool.join()

    # The app's next process (here the parent) sends what the dead worker left.
    parent = KlimeClient("key", collector_process.url, spool_dir=spool)
    parent.track("Parent", user_id="u")
    parent.shutdown()
    assert collector_process.wait_for(51, timeout=30), collector_process.stats()
    tasks = sorted(
        (e["properties"]["task"], e["properties"]["n"])
        for e in collector_process.events()
        if e["event"] == "Task"
    )
    assert tasks == [(t, n) for t in range(5) for n in range(10)]
