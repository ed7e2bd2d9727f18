"""Exit promises against the real hosts: Gunicorn's worker_exit budget and master on_exit,
uWSGI's hook chaining, and the SIGTERM flush bound of multiprocessing pool workers.

The bounds are the documented ones, written here: worker_exit sends within half of the
shorter of graceful_timeout and timeout (README, "Servers"); a SIGTERMed pool worker
waits at most the sum of its clients' shutdown_timeouts plus 0.5 s
(docs/fork-safety.md). A "blackhole" server accepts connections and never answers, so
every flush runs until its bound.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from klime_mp.collector import Collector
from klime_mp.demo import example_dir, request
from tests.scripted_server import Reply, ScriptedServer
from tests.servers import Servers, assert_exactly_once, run_load, running_servers, stop_and_count

UWSGI = Path(sys.executable).with_name("uwsgi")


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A URL whose server accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- Gunicorn ----------------------------------------------------------------------------

BUDGET_APP = """
import klime_mp

klime_mp.configure(endpoint={endpoint!r}, flush_interval=60_000, timeout=60,
                   shutdown_timeout=60)  # far longer than the worker's exit budget

def app(environ, start_response):
    if environ["PATH_INFO"] != "/healthz":
        klime_mp.track("Queued", user_id="u1")
    start_response("200 OK", [("Content-Length", "0")])
    return [b""]
"""

BUDGET_CONFIG = """
import time
from klime_mp import gunicorn_conf as klime

workers = 1

def post_fork(server, worker):
    klime.post_fork(server, worker)

def worker_exit(server, worker):
    started = time.monotonic()
    klime.worker_exit(server, worker)
    with open({mark!r}, "w") as f:  # only reached if the arbiter did not SIGKILL first
        f.write(str(time.monotonic() - started))

on_exit = klime.on_exit
"""


@pytest.mark.server
@pytest.mark.parametrize(
    ("graceful_timeout", "timeout"), [(6, 30), (30, 6)], ids=["graceful-6", "timeout-6"]
)
def test_worker_exit_returns_within_half_the_shorter_gunicorn_timeout(
    servers: Servers, tmp_path: Path, blackhole: str, graceful_timeout: int, timeout: int
) -> None:
    # Budget: half of min(6, 30) = 3 s, although the client would wait 60 s.
    mark = tmp_path / "worker_exit_took"
    (tmp_path / "app.py").write_text(BUDGET_APP.format(endpoint=blackhole))
    config = tmp_path / "budget.conf.py"
    config.write_text(BUDGET_CONFIG.format(mark=str(mark)))
    server = servers.gunicorn_with_config(
        config,
        "--graceful-timeout",
        str(graceful_timeout),
        "--timeout",
        str(timeout),
        "--chdir",
        str(tmp_path),
    )
    assert request(server.url, "POST", "/track")[0] == 200
    assert server.stop() == 0, server.log_tail()
    assert mark.exists(), f"worker_exit never returned:\n{server.log_tail()}"
    took = float(mark.read_text())
    # It used its budget (a lower bound a loaded machine cannot break), and returned
    # well before the client's own 60 s (and, when graceful_timeout is 6, before the
    # arbiter's SIGKILL, or the mark would be missing).
    assert 2.9 <= took <= 6.0, took


MASTER_APP = """
import klime_mp

klime_mp.configure(flush_interval=60_000)  # KLIME_ENDPOINT: the test's collector
klime_mp.track("Master Started", user_id="master")  # queued in the master (--preload)

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "0")])
    return [b""]
"""


@pytest.mark.server
def test_the_masters_own_events_are_sent_when_gunicorn_stops(
    servers: Servers, collector: Collector, tmp_path: Path
) -> None:
    (tmp_path / "master_app.py").write_text(MASTER_APP)
    server = servers.gunicorn(
        "--preload", "--chdir", str(tmp_path), workers=2, app="master_app:app"
    )
    assert collector.stats().stored == 0  # still queued in the master
    assert server.stop() == 0, server.log_tail()
    assert collector.wait_for(1, 20)
    stored = collector.events()
    # Once: the forked workers dropped their copy of the master's queue.
    assert [e["event"] for e in stored] == ["Master Started"]
    assert collector.stats().duplicates == 0


# -- uWSGI -------------------------------------------------------------------------------

USER_HOOKS = """
import os
import uwsgi

def _mine():
    with open({mark!r}, "a") as f:
        f.write(f"user atexit {{os.getpid()}}\\n")

uwsgi.atexit = _mine  # the user's own hook, set before klime_mp.uwsgi is imported
"""

CHAINED_INI = """
[uwsgi]
chdir = {app_dir}
pythonpath = {hooks_dir}
module = app:app
master = true
need-app = true
import = user_hooks
import = klime_mp.uwsgi
enable-threads = true
py-call-uwsgi-fork-hooks = true
die-on-term = true
"""


@pytest.mark.server
@pytest.mark.skipif(not UWSGI.is_file(), reason="uWSGI is not installed")
def test_uwsgi_atexit_chains_onto_the_users_hook_in_real_uwsgi(
    servers: Servers, collector: Collector, tmp_path: Path
) -> None:
    mark = tmp_path / "user-hooks"
    (tmp_path / "user_hooks.py").write_text(USER_HOOKS.format(mark=str(mark)))
    ini = tmp_path / "chained.ini"
    ini.write_text(CHAINED_INI.format(app_dir=example_dir(), hooks_dir=tmp_path))
    server = servers.uwsgi(workers=2, ini=ini)
    load = run_load(server)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)  # klime_mp's atexit flush ran in every worker...
    worker_pids = set(got.track_by_pid)
    hook_pids = {int(line.split()[-1]) for line in mark.read_text().splitlines()}
    assert worker_pids <= hook_pids  # ...and so did the user's hook it chained onto


# -- the SIGTERM flush of multiprocessing pool workers ---------------------------------

POOL_SCRIPT = """
import json, multiprocessing, os, sys, time
from klime_mp import KlimeClient

kind, url, done_log = sys.argv[1], sys.argv[2], sys.argv[3]
clients, timeout = int(sys.argv[4]), float(sys.argv[5])
KEEP = []

def report_done(n):
    def on_success(response):
        with open(done_log, "a") as f:
            f.write(f"{{n}}\\n")
    return on_success

def task(tracked=None):
    for n in range(clients):
        client = KlimeClient("key", endpoint=url, flush_interval=60_000,
                             retry_max_attempts=1, timeout=60, shutdown_timeout=timeout,
                             on_success=report_done(n))
        client.track("Queued", {{"client": n}}, user_id="u")
        KEEP.append(client)
    if tracked is not None:  # a busy process: SIGTERM finds it in the middle of work
        tracked.set()
        time.sleep(120)
    return os.getpid()

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    if kind == "pool":
        with ctx.Pool(1) as pool:
            assert pool.apply(task) != os.getpid()
            started = time.monotonic()
        # Pool.__exit__ -> terminate(): SIGTERM to the idle worker, then join it.
    else:
        tracked = ctx.Event()
        process = ctx.Process(target=task, args=(tracked,))
        process.start()
        assert tracked.wait(60)
        started = time.monotonic()
        process.terminate()
        if kind == "twice":  # once more while the flush runs, as Hypercorn's master does
            while not (os.path.exists(done_log) and open(done_log).read()):
                time.sleep(0.01)  # the first client's answer: the flush is under way
            process.terminate()
        process.join(90)
        assert process.exitcode == -15, process.exitcode  # died of SIGTERM, after its flush
    print(json.dumps({{"took": time.monotonic() - started}}))
"""


def run_pool(tmp_path: Path, kind: str, url: str, clients: int, shutdown_timeout: float) -> float:
    script = tmp_path / "pool_sigterm.py"
    script.write_text(POOL_SCRIPT.format())
    argv = [str(script), kind, url, str(tmp_path / "done"), str(clients), str(shutdown_timeout)]
    result = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    took: float = json.loads(result.stdout)["took"]
    return took


@pytest.mark.fork
def test_sigterm_flush_of_a_pool_worker_is_bounded_by_the_sum_of_shutdown_timeouts(
    tmp_path: Path, blackhole: str
) -> None:
    # Two clients of 1.5 s each: the worker must be gone within 2 * 1.5 + 0.5 = 3.5 s
    # (plus scheduling slack), although each client would wait 60 s for an answer.
    took = run_pool(tmp_path, "pool", blackhole, clients=2, shutdown_timeout=1.5)
    assert took <= 3.5 + 5.0, took


@pytest.mark.fork
def test_sigterm_flush_of_a_busy_process_waits_out_every_clients_shutdown_timeout(
    tmp_path: Path, blackhole: str
) -> None:
    # Process.terminate() on a busy process: the SIGTERM handler's flush, unanswered.
    # Each of the two clients must get its whole 1.5 s before the process dies (a load
    # only makes that later), and the process must still be gone soon after 3.5 s.
    took = run_pool(tmp_path, "process", blackhole, clients=2, shutdown_timeout=1.5)
    assert 2 * 1.5 <= took <= 3.5 + 5.0, took


@pytest.mark.fork
def test_sigterm_flush_gives_every_client_its_own_shutdown_timeout(tmp_path: Path) -> None:
    # Process.terminate() on a busy process, so the SIGTERM handler flushes (a pool's
    # idle worker may leave through its exit finalizer instead). Three clients, each
    # answered after 1.2 s: 3.6 s in all. The wait is the sum of their shutdown_timeouts
    # (3 * 2.5 + 0.5 = 8 s), not one of them (3 s), so the third client's events arrive.
    server = ScriptedServer().start()
    try:
        server.then(*[Reply(delay=1.2, body=b'{"status":"ok","accepted":1,"failed":0}')] * 3)
        run_pool(tmp_path, "process", server.url, clients=3, shutdown_timeout=2.5)
        done = sorted((tmp_path / "done").read_text().split())
        assert done == ["0", "1", "2"]
        assert len(server.received) == 3
    finally:
        server.stop()


@pytest.mark.fork
def test_a_second_sigterm_during_the_flush_does_not_cut_it_short(tmp_path: Path) -> None:
    # Hypercorn's master terminate()s its other workers when one exits, and on its own
    # way out multiprocessing terminate()s its daemon children again. The second SIGTERM
    # comes once the first client's batch is answered: the other two must still be sent.
    server = ScriptedServer().start()
    try:
        server.then(*[Reply(delay=0.5, body=b'{"status":"ok","accepted":1,"failed":0}')] * 3)
        run_pool(tmp_path, "twice", server.url, clients=3, shutdown_timeout=2.5)
        assert sorted((tmp_path / "done").read_text().split()) == ["0", "1", "2"]
        assert len(server.received) == 3
    finally:
        server.stop()
