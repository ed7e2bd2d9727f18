"""``klime-mp demo --server celery``: a real Celery prefork worker, recycled every 10
tasks, behind the demo's HTTP front, with redis-server as broker and result backend.
Every event arrives once, through recycling, a kill -9 of a pool process and the warm
shutdown."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klime_mp.collector import Collector
from klime_mp.demo import DemoError, drive, launchers, server_env, tally

pytestmark = pytest.mark.server

needs_celery = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)
DEMO_TIMEOUT_S = 100  # a run takes about 10 s; below pytest's 120 s


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run(
        [sys.executable, "-m", "klime_mp", "demo", "--server", "celery", *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env=env,
    )


def workers_listed(out: str) -> int:
    found = re.search(r"\((\d+) workers\)", out)
    assert found, out
    return int(found[1])


@needs_celery
def test_celery_demo_recycles_pool_processes_and_loses_nothing() -> None:
    pytest.importorskip("celery")
    pytest.importorskip("redis")
    result = run_demo("--workers", "2", "--requests", "60", "--no-kill")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "2 Celery (prefork) workers" in out
    assert "requests sent     60 (60 ok, 0 failed)" in out
    # 60 requests: 6 users sign in (2 events), join (2), then 48 reports (1): 72 events
    assert "events expected   72" in out
    assert "events delivered  72" in out
    assert "events lost       0" in out
    assert "duplicates        0" in out
    assert "<- mismatch" not in out
    # 10 tasks per pool process: 60 requests need at least 6 of them.
    assert workers_listed(out) >= 6
    assert "OK: every tracked event arrived exactly once." in out


@needs_celery
def test_celery_demo_with_its_kill_9_loses_nothing() -> None:
    pytest.importorskip("celery")
    pytest.importorskip("redis")
    result = run_demo("--workers", "2", "--requests", "60")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "requests sent     60 (60 ok, 0 failed)" in out
    assert "events lost       0" in out
    assert "OK: every tracked event arrived exactly once." in out
    # The busiest process so far has often been recycled (10 tasks each) by the time of
    # the kill: the demo picks among the live ones, so a kill does happen.
    assert "kill -9 worker" in out


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for Celery to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as status:
            return status.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


@needs_celery
def test_a_pool_process_killed_mid_life_loses_nothing(tmp_path: Path, collector: Collector) -> None:
    pytest.importorskip("celery")
    pytest.importorskip("redis")
    env = server_env(collector.url, tmp_path / "spool")
    server = launchers.load("celery").server(2, tmp_path, env)
    try:
        server.start()
        first = drive(server.url, 30, 4)
        # The pool process that served the most tasks in its current life, right after
        # its last one: events queued within the flush interval (2 s) are still unsent.
        pool = server.worker_pids()
        live = [pid for pid in first.requests_by_pid if pid in pool and alive(pid)]
        assert live, f"no live pool process served a request: {first.requests_by_pid}"
        victim = max(live, key=lambda pid: first.requests_by_pid[pid])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while victim in server.worker_pids():  # Celery reaps it and forks a successor
            assert time.monotonic() < deadline, "Celery did not replace the killed process"
            time.sleep(0.02)
        load = first.combined(drive(server.url, 30, 4))
        assert server.stop() == 0
    finally:
        server.kill()
    assert load.ok == 60, load.errors[:3]
    got = tally(collector, load.events_expected, settle=15.0)
    assert got.stored == load.events_expected == 72
    assert got.track_by_pid == load.requests_by_pid  # one track event per request
    assert got.track_by_pid[victim] == first.requests_by_pid[victim] > 0
    assert got.duplicates <= 100  # at most the batch the victim had in flight


def test_check_names_redis_server_when_it_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server
    with pytest.raises(DemoError, match=r"needs redis-server .*apt-get install redis-server"):
        launchers.load("celery").check()


def test_demo_imports_without_celery_and_names_it_when_needed() -> None:
    # sys.modules[name] = None makes "import celery" fail, as if it were not installed.
    code = (
        "import sys; sys.modules['celery'] = None\n"
        "from klime_mp.__main__ import main\n"
        "sys.exit(main(['demo', '--server', 'celery', '--requests', '1']))"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2, result.stdout + result.stderr
    if shutil.which("redis-server", path=env["PATH"]) is None:
        assert "needs redis-server" in result.stderr  # checked first
    else:
        assert "needs the celery package: pip install 'celery[redis]'" in result.stderr
