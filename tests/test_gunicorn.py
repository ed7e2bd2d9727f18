"""Gunicorn: one event per tracked action, whatever the workers, signals and recycling.

Real Gunicorn masters serving examples/gunicorn_app with ``-c python:klime_mp.gunicorn_conf``
(or a user's config that imports the hooks), a real collector counting message ids.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from klime_mp import gunicorn_conf
from klime_mp.collector import Collector
from klime_mp.demo import ServerProcess, request
from tests.servers import (
    Servers,
    assert_exactly_once,
    run_load,
    running_servers,
    stop_and_count,
    wait_for_log,
    wait_until_serving,
)

pytestmark = pytest.mark.server

gunicorn_config = pytest.importorskip("gunicorn.config")

BOOTING = "Booting worker with pid"
EXITING = "Worker exiting"
HOOKS = ("post_fork", "worker_exit", "worker_abort", "on_exit")
EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "examples/gunicorn_app/gunicorn.conf.py"


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_every_request_delivers_its_events_exactly_once(
    servers: Servers, collector: Collector, worker_class: str, preload: bool, workers: int
) -> None:
    options = [
        "--worker-class",
        worker_class,
        "--threads",
        "4" if worker_class == "gthread" else "1",
    ]
    if preload:
        options.append("--preload")
    server = servers.gunicorn(*options, workers=workers)
    load = run_load(server)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert len(load.requests_by_pid) <= workers


def test_recycled_workers_lose_nothing(servers: Servers, collector: Collector) -> None:
    server = servers.gunicorn(
        "--preload", "--max-requests", "20", "--max-requests-jitter", "0", workers=2
    )
    load = run_load(server, total=100)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert len(load.requests_by_pid) >= 4  # 100 requests, 20 per worker life: recycled


def test_reload_with_hup_mid_load_loses_nothing(servers: Servers, collector: Collector) -> None:
    server = servers.gunicorn("--preload", workers=2)

    def reload() -> None:
        server.signal(signal.SIGHUP)
        wait_for_log(server, BOOTING, 4)  # two new workers
        wait_for_log(server, EXITING, 2)  # the two old ones stopped gracefully

    load = run_load(server, total=100, at={40: reload})
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    old, new = booted_pids(server)[:2], booted_pids(server)[2:]
    assert set(load.requests_by_pid) & set(old)  # served before the reload
    assert set(load.requests_by_pid) & set(new)  # and after it


def test_sigterm_mid_load_delivers_every_answered_request(
    servers: Servers, collector: Collector
) -> None:
    server = servers.gunicorn("--preload", workers=4)
    load = run_load(server, total=100, at={50: server.request_stop})  # SIGTERM
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got, allow_refused=True)
    assert load.ok >= 50


def test_scaling_with_ttin_and_ttou_loses_nothing(servers: Servers, collector: Collector) -> None:
    server = servers.gunicorn("--preload", workers=2)

    def scale(signum: int, booted: int, exited: int) -> Callable[[], None]:
        def action() -> None:
            server.signal(signum)
            wait_for_log(server, BOOTING, booted)
            wait_for_log(server, EXITING, exited)

        return action

    actions = {
        20: scale(signal.SIGTTIN, 3, 0),
        40: scale(signal.SIGTTIN, 4, 0),
        60: scale(signal.SIGTTOU, 4, 1),
        80: scale(signal.SIGTTOU, 4, 2),
    }
    load = run_load(server, total=100, at=actions)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)


def booted_pids(server: ServerProcess) -> list[int]:
    """Worker PIDs in the order gunicorn booted them."""
    return [int(line.rsplit(" ", 1)[1]) for line in server.log().splitlines() if BOOTING in line]


# -- the hooks themselves -------------------------------------------------------------


@pytest.mark.parametrize("name", HOOKS)
def test_hooks_have_the_arities_gunicorn_accepts(name: str) -> None:
    config = gunicorn_config.Config()
    hook = getattr(gunicorn_conf, name)
    config.set(name, hook)  # gunicorn validates the arity here (TypeError otherwise)
    assert config.settings[name].get() is hook


def test_config_module_sets_only_its_hooks() -> None:
    # Gunicorn applies every module-level name that matches a setting: nothing else may.
    settings = {setting.name for setting in gunicorn_config.KNOWN_SETTINGS}
    assert {name for name in vars(gunicorn_conf) if name in settings} == set(HOOKS)


def test_user_config_that_chains_the_hooks_works(
    servers: Servers, collector: Collector, tmp_path: Path
) -> None:
    marker = tmp_path / "user-hooks"
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(
        textwrap.dedent(f"""
        from klime_mp import gunicorn_conf as klime

        preload_app = True
        workers = 2

        def post_fork(server, worker):
            klime.post_fork(server, worker)
            with open({str(marker)!r}, "a") as f:
                f.write("post_fork\\n")

        def worker_exit(server, worker):
            with open({str(marker)!r}, "a") as f:
                f.write("worker_exit\\n")
            klime.worker_exit(server, worker)

        worker_abort = klime.worker_abort
        on_exit = klime.on_exit
        """)
    )
    server = servers.gunicorn_with_config(config)
    wait_until_serving(server, 2)  # a worker still booting ignores the stop (Gunicorn)
    load = run_load(server)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    # The log says why a hook did not run (a worker SIGKILLed at the graceful timeout).
    hooks = sorted(marker.read_text().split())
    assert hooks == ["post_fork"] * 2 + ["worker_exit"] * 2, server.log_tail(60)


def test_example_config_serves_and_delivers(servers: Servers, collector: Collector) -> None:
    server = servers.gunicorn_with_config(EXAMPLE_CONFIG, "--workers", "2")
    load = run_load(server)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)


def test_worker_exit_keeps_to_its_budget_when_the_server_is_down(tmp_path: Path) -> None:
    # In a child process: the exit flush marks its process as exiting for good.
    script = textwrap.dedent("""
        import logging, socket, sys, time, types
        import klime_mp
        from klime_mp import gunicorn_conf

        logging.basicConfig(level=logging.ERROR, stream=sys.stdout)
        with socket.socket() as s:  # a port with nothing listening
            s.bind(("127.0.0.1", 0)); dead = s.getsockname()[1]
        klime_mp.configure("key", endpoint=f"http://127.0.0.1:{dead}",
                           retry_initial_delay=200, shutdown_timeout=30)
        klime_mp.track("Queued", user_id="u1")
        cfg = types.SimpleNamespace(graceful_timeout=2, timeout=30)
        gunicorn_conf.post_fork(None, types.SimpleNamespace(cfg=cfg))
        started = time.monotonic()
        gunicorn_conf.worker_exit(None, None)
        print("took", round(time.monotonic() - started, 2))
        sys.stdout.flush()
        import os; os._exit(0)  # the leftover flush thread is the point: do not wait
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    took = float(result.stdout.split("took ")[1].split()[0])
    assert took < 6.0  # within half of graceful_timeout (1 s), not the client's 30 s
    # What the budget left unsent is reported before the worker exits, not lost unseen.
    assert "1 events lost (shutdown_timeout)" in result.stdout


def test_a_worker_killed_for_timeout_reports_what_it_loses(
    servers: Servers, collector: Collector, tmp_path: Path
) -> None:
    app = tmp_path / "slow_app.py"
    app.write_text(
        textwrap.dedent("""
        import time, klime_mp

        klime_mp.configure(flush_interval=60_000)  # keep the events queued

        def app(environ, start_response):
            if environ["PATH_INFO"] == "/healthz":
                start_response("200 OK", [("Content-Length", "0")])
                return [b""]
            for n in range(3):
                klime_mp.track("Slow Started", {"n": n}, user_id="u1")
            time.sleep(60)  # longer than --timeout: the arbiter aborts the worker
        """)
    )
    server = servers.gunicorn("--timeout", "2", "--chdir", str(tmp_path), app="slow_app:app")
    with contextlib.suppress(OSError):  # gunicorn answers 500 or the worker just dies
        request(server.url, "POST", "/slow", timeout=15)
    deadline = time.monotonic() + 10
    while "events queued" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "aborted by gunicorn (timeout) with 3 events queued" in server.log()
    server.stop()
