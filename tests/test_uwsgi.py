"""uWSGI: one event per tracked action with a master and 4 workers, however the app
loads and whether or not Python's fork hooks run; and the hooks' chaining and checks.

The real-server tests run the example app with examples/gunicorn_app/uwsgi.ini (which
imports klime_mp.uwsgi); the rest use a stand-in for the ``uwsgi`` module, which only
exists inside a uWSGI process.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import klime_mp.uwsgi as klime_uwsgi
from klime_mp.collector import Collector
from klime_mp.demo import example_dir
from klime_mp.lifecycle import forksafe
from tests.servers import (
    Servers,
    assert_exactly_once,
    run_load,
    running_servers,
    stop_and_count,
    wait_for_log,
)

pytestmark = pytest.mark.server

UWSGI = Path(sys.executable).with_name("uwsgi")
needs_uwsgi = pytest.mark.skipif(
    not UWSGI.is_file() and shutil.which("uwsgi") is None, reason="uWSGI is not installed"
)
EXAMPLE_INI = example_dir() / "uwsgi.ini"
FORK_HOOKS_OPTION = "py-call-uwsgi-fork-hooks = true"
FORK_HOOKS_WARNING = "Fix: py-call-uwsgi-fork-hooks = true"


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


@needs_uwsgi
@pytest.mark.parametrize("fork_hooks", [True, False], ids=["fork-hooks", "no-fork-hooks"])
@pytest.mark.parametrize("lazy_apps", [False, True], ids=["fork-after-load", "lazy-apps"])
def test_every_request_delivers_its_events_exactly_once(
    servers: Servers, collector: Collector, tmp_path: Path, lazy_apps: bool, fork_hooks: bool
) -> None:
    ini = EXAMPLE_INI
    if not fork_hooks:  # the example's ini turns them on: a copy without that line
        text = EXAMPLE_INI.read_text().replace("chdir = %d", f"chdir = {EXAMPLE_INI.parent}")
        assert FORK_HOOKS_OPTION in text
        ini = tmp_path / "uwsgi.ini"
        ini.write_text(text.replace(FORK_HOOKS_OPTION, ""))
    server = servers.uwsgi(*(["--lazy-apps"] if lazy_apps else []), workers=4, ini=ini)
    if lazy_apps:
        # Each worker loads the app itself. A graceful stop that comes while one is still
        # loading leaves uWSGI waiting out its mercy period: start once all are up.
        wait_for_log(server, "WSGI app 0 (mountpoint='') ready", 4)
    load = run_load(server)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    # Workers forked from a master that loaded klime_mp say so, once each, with the fix.
    warnings = server.log().count(FORK_HOOKS_WARNING)
    assert warnings == (4 if not fork_hooks and not lazy_apps else 0), server.log_tail()


@needs_uwsgi
def test_graceful_stop_mid_load_delivers_every_answered_request(
    servers: Servers, collector: Collector
) -> None:
    server = servers.uwsgi(workers=4)
    load = run_load(server, total=100, at={50: server.request_stop})  # the master FIFO's q
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got, allow_refused=True)
    assert load.ok >= 50


# -- the hooks, against a stand-in uwsgi module ----------------------------------------


class FakeUwsgi:
    """What klime_mp.uwsgi reads from the real module, plus hooks a user already set."""

    def __init__(self, worker_id: int = 0, has_threads: int | None = 1) -> None:
        self.opt: dict[str, Any] = {"master": True}
        self._worker_id = worker_id
        if has_threads is not None:
            self.has_threads = has_threads
        self.calls: list[str] = []

    def worker_id(self) -> int:
        return self._worker_id


@pytest.fixture
def exit_flushes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    # The real exit flush would mark this test process as exiting: count calls instead.
    calls: list[str] = []
    monkeypatch.setattr(forksafe, "exit_flush_now", lambda: calls.append("exit_flush"))
    monkeypatch.setattr(klime_uwsgi, "_checked_in", 0)
    return calls


def test_import_outside_uwsgi_installs_nothing() -> None:
    assert klime_uwsgi.uwsgi_api() is None
    assert klime_uwsgi.install() is False


def test_hooks_chain_onto_the_users_without_replacing_them(exit_flushes: list[str]) -> None:
    api = FakeUwsgi()
    api.atexit = lambda: api.calls.append("user atexit")  # type: ignore[attr-defined]
    api.post_fork_hook = lambda: api.calls.append("user post_fork")  # type: ignore[attr-defined]

    assert klime_uwsgi.install(api) is True
    api.atexit()  # type: ignore[attr-defined]
    api.post_fork_hook()  # type: ignore[attr-defined]

    assert exit_flushes == ["exit_flush"]
    assert api.calls == ["user atexit", "user post_fork"]


def test_install_is_idempotent(exit_flushes: list[str]) -> None:
    api = FakeUwsgi()
    klime_uwsgi.install(api)
    klime_uwsgi.install(api)
    api.atexit()  # type: ignore[attr-defined]
    assert exit_flushes == ["exit_flush"]


def test_uses_uwsgidecorators_postfork_chain_when_it_is_loaded(
    exit_flushes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    chain: list[Any] = []

    class Decorators:
        @staticmethod
        def postfork(function: Any) -> Any:
            chain.append(function)
            return function

    monkeypatch.setitem(sys.modules, "uwsgidecorators", Decorators)
    api = FakeUwsgi()
    klime_uwsgi.install(api)
    assert len(chain) == 1
    assert not hasattr(api, "post_fork_hook")  # uwsgidecorators owns that slot


def test_threads_off_warns_once_naming_the_option_and_flushes_per_request(
    exit_flushes: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    flushed: list[float | None] = []
    monkeypatch.setattr(klime_uwsgi, "flush_process", lambda timeout: flushed.append(timeout))
    api = FakeUwsgi(worker_id=1, has_threads=0)  # a worker, as with lazy-apps
    api.after_req_hook = lambda: api.calls.append("user after_req")  # type: ignore[attr-defined]

    with caplog.at_level(logging.WARNING, logger="klime_mp.uwsgi"):
        klime_uwsgi.install(api)
        klime_uwsgi.check_worker(api)  # a second check in the same process: silent

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1
    assert "without Python threads" in lines[0] and "enable-threads = true" in lines[0]
    api.after_req_hook()  # type: ignore[attr-defined]
    assert flushed == [5.0]  # the per-request flush's bound (docs/servers.md: 5 s)
    assert api.calls == ["user after_req"]


def test_threads_on_adds_no_per_request_hook(exit_flushes: list[str]) -> None:
    api = FakeUwsgi(worker_id=1, has_threads=1)
    klime_uwsgi.install(api)
    assert not hasattr(api, "after_req_hook")


@pytest.mark.parametrize(
    ("options", "enabled"),
    [({}, False), ({"enable-threads": True}, True), ({"threads": b"4"}, True)],
)
def test_threads_are_read_from_options_on_builds_without_has_threads(
    options: dict[str, Any], enabled: bool
) -> None:
    api = FakeUwsgi(has_threads=None)
    api.opt.update(options)
    assert klime_uwsgi.threads_enabled(api) is enabled


@needs_uwsgi
def test_recycled_workers_lose_nothing(servers: Servers, collector: Collector) -> None:
    # uWSGI recycles no worker younger than min-worker-lifetime (10 s by default).
    server = servers.uwsgi("--max-requests", "15", "--min-worker-lifetime", "0", workers=2)
    load = run_load(server)
    # A graceful stop that comes while uWSGI is still respawning a worker skips that
    # worker, and the master waits out its mercy period (a uWSGI race, seen under CPU
    # load): let every recycled worker be replaced and settle first.
    wait_for_log(server, "Respawned uWSGI worker", server.log().count("is done. Seeya!"))
    time.sleep(1.0)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert len(load.requests_by_pid) >= 4  # at most 15 requests per worker life


# -- no configuration: configure() finds uWSGI itself -----------------------------------

IMPORT_LINE = "import = klime_mp.uwsgi"


def ini_without_import(tmp_path: Path) -> Path:
    """The example's ini without ``import = klime_mp.uwsgi``: nothing but configure()."""
    text = EXAMPLE_INI.read_text().replace("chdir = %d", f"chdir = {EXAMPLE_INI.parent}")
    assert IMPORT_LINE in text
    ini = tmp_path / "bare-uwsgi.ini"
    ini.write_text(text.replace(IMPORT_LINE, ""))
    return ini


@needs_uwsgi
@pytest.mark.parametrize(
    ("lazy_apps", "teardown"),
    [(False, True), (False, False), (True, False)],
    ids=["fork-after-load", "fork-after-load-skip-atexit-teardown", "lazy-apps-skip-teardown"],
)
def test_without_the_import_line_recycling_and_stop_lose_nothing(
    servers: Servers, collector: Collector, tmp_path: Path, lazy_apps: bool, teardown: bool
) -> None:
    options = ["--max-requests", "15", "--min-worker-lifetime", "0"]
    if lazy_apps:
        options.append("--lazy-apps")
    if not teardown:
        # No Py_Finalize in a leaving worker: Python's atexit handlers never run there,
        # only uwsgi.atexit does; klime_mp must have hooked it without being told.
        options.append("--skip-atexit-teardown")
    server = servers.uwsgi(*options, workers=2, ini=ini_without_import(tmp_path))
    load = run_load(server)
    wait_for_log(server, "Respawned uWSGI worker", server.log().count("is done. Seeya!"))
    time.sleep(1.0)  # as in test_recycled_workers_lose_nothing: let respawns settle
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert len(load.requests_by_pid) >= 4


def test_configure_installs_the_uwsgi_hooks_once(
    exit_flushes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import klime_mp
    from klime_mp import default, host_hooks

    api = FakeUwsgi()
    monkeypatch.setattr(default, "_default", None)  # restored afterwards
    monkeypatch.setitem(sys.modules, "uwsgi", api)
    monkeypatch.setattr(host_hooks, "_installed_in", set())
    assert not hasattr(api, "atexit")
    klime_mp.configure("key", endpoint="http://127.0.0.1:9")
    assert hasattr(api, "atexit")  # configure() found uWSGI and hooked it
    klime_mp.configure("key", endpoint="http://127.0.0.1:9")
    klime_uwsgi.install()  # what ``import = klime_mp.uwsgi`` does: still works, once
    api.atexit()  # type: ignore[attr-defined]
    assert exit_flushes == ["exit_flush"]
