"""``klime-mp demo``, the README's main command, runs end to end and tells the truth."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from klime_mp.__main__ import main
from klime_mp.demo import LoadResult, Progress, Tally, launchers, planned_request, report

pytestmark = pytest.mark.server


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run(
        [sys.executable, "-m", "klime_mp", "demo", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def test_demo_runs_end_to_end_and_exits_0() -> None:
    pytest.importorskip("gunicorn")
    result = run_demo("--requests", "60", "--workers", "4", "--no-kill")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "kill -9" not in out
    assert "4 Gunicorn (--preload) workers" in out
    assert "requests sent     60 (60 ok, 0 failed)" in out
    assert "events lost       0" in out
    assert "duplicates        0" in out
    assert "(4 workers)" in out  # every worker has a row, even one that served nothing
    assert "OK: every tracked event arrived exactly once." in out
    assert "60/60 requests" in result.stderr  # the progress bar, on stderr


@pytest.mark.skipif(
    not Path(sys.executable).with_name("uwsgi").is_file() and shutil.which("uwsgi") is None,
    reason="uWSGI is not installed",
)
def test_demo_runs_each_server_in_turn_and_sums_them_up() -> None:
    pytest.importorskip("gunicorn")
    # --no-kill: exact figures (after a kill -9 the killed worker's in-flight batch may
    # come twice; test_demo_kills_a_worker... covers that)
    result = run_demo(
        "--requests", "40", "--workers", "2", "--server", "gunicorn", "--uwsgi", "--no-kill"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "2 Gunicorn (--preload) workers" in out
    assert "2 uWSGI workers" in out
    assert out.count("OK: every tracked event arrived exactly once.") == 2
    table = out.split("server        expected", 1)[1].splitlines()
    # 40 requests: 4 users sign in (2 events), join (2), then 32 reports (1): 48 events
    assert table[1].split() == ["gunicorn", "48", "48", "0", "0"]
    assert table[2].split() == ["uwsgi", "48", "48", "0", "0"]


def test_demo_module_imports_without_gunicorn() -> None:
    # sys.modules[name] = None makes "import gunicorn" fail, as if it were not installed.
    code = (
        "import sys; sys.modules['gunicorn'] = None; sys.modules['gunicorn.config'] = None\n"
        "from klime_mp.__main__ import main\n"
        "sys.exit(main(['demo', '--requests', '1']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "the demo needs Gunicorn: pip install gunicorn" in result.stderr


def test_report_fails_when_an_event_is_missing() -> None:
    load = LoadResult(sent=2, ok=2, events_expected=3, requests_by_pid=Counter({10: 2}))
    got = Tally(stored=2, duplicates=0, connections=1, batches=1, track_by_pid=Counter({10: 1}))
    out = io.StringIO()
    assert report(load, got, 1.0, out) is False
    assert "FAIL: events were LOST or DUPLICATED." in out.getvalue()
    assert "<- mismatch" in out.getvalue()


def test_report_lists_every_worker_and_counts_the_lost() -> None:
    load = LoadResult(sent=3, ok=3, events_expected=3, requests_by_pid=Counter({10: 3}))
    got = Tally(stored=2, duplicates=0, connections=1, batches=1, track_by_pid=Counter({10: 2}))
    out = io.StringIO()
    assert report(load, got, 1.0, out, workers={10, 11, 12}) is False
    text = out.getvalue()
    assert "events lost       1" in text
    assert "(3 workers)" in text
    assert "    11                     0             0" in text  # served nothing: a zero row


def test_servers_are_found_by_module_name() -> None:
    assert {"gunicorn", "uwsgi"} <= set(launchers.names())
    assert launchers.load("gunicorn").title == "Gunicorn (--preload)"
    with pytest.raises(ValueError, match="server must be one of"):
        launchers.load("nginx")


def test_report_fails_on_duplicates() -> None:
    load = LoadResult(sent=1, ok=1, events_expected=1, requests_by_pid=Counter({10: 1}))
    got = Tally(stored=1, duplicates=1, connections=1, batches=2, track_by_pid=Counter({10: 1}))
    assert report(load, got, 1.0, io.StringIO()) is False


def test_each_user_signs_in_then_joins_then_acts() -> None:
    paths = [planned_request(index, 20)[0] for index in range(20)]
    assert paths[:2] == ["/login", "/login"]  # 20 requests: two users
    assert paths[2:4] == ["/orgs/org_0/members", "/orgs/org_1/members"]
    assert set(paths[4:]) == {"/reports"}


def test_progress_is_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(100, out)
    for done in range(1, 101):
        progress(done)
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # the first request, then every tenth
    assert lines[-1].endswith("100/100 requests")


@pytest.mark.parametrize(
    "args", [["--requests", "0"], ["--requests", "100001"], ["--workers", "x"]]
)
def test_bad_options_are_refused_before_anything_starts(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "must be a positive integer" in error or "at most 100000" in error


def help_text(*command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "klime_mp", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_describes_each_command_in_plain_text() -> None:
    main_help = help_text()
    assert "``" not in main_help  # no raw reST
    assert "collector" in main_help and "demo" in main_help
    collector_help = help_text("collector")
    for endpoint in ("POST /v1/batch", "GET  /v1/stats", "GET  /v1/events"):
        assert endpoint in collector_help
    assert "fractions from 0 to 1" in collector_help
    assert "./klime-collector.sqlite3" in collector_help  # where events go without --db
    demo_help = help_text("demo")
    assert "delivered, lost and duplicated" in demo_help
    assert "--server {celery,gunicorn,uvicorn,uwsgi}" in demo_help  # every launcher, sorted


def test_demo_kills_a_worker_with_sigkill_and_still_loses_nothing() -> None:
    pytest.importorskip("gunicorn")
    result = run_demo("--requests", "120", "--workers", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "kill -9 worker" in out  # by default, half-way through the load
    assert "requests sent     120 (120 ok, 0 failed)" in out
    assert "events lost       0" in out
    # The killed worker's batch in flight may reach the server twice; it stores it once.
    assert "OK: every tracked event arrived exactly once." in out


def test_demo_under_uvicorn_loses_nothing_when_a_worker_is_killed() -> None:
    # uvicorn's workers end in the ASGI lifespan shutdown, not an exit hook: the killed
    # worker's spooled events must be sent by a sibling there, or they stay on disk.
    pytest.importorskip("uvicorn")
    result = run_demo("--server", "uvicorn", "--requests", "120", "--workers", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "3 uvicorn workers" in out
    assert "kill -9 worker" in out
    assert "requests sent     120 (120 ok, 0 failed)" in out
    # 120 requests: 12 users sign in (2 events), join (2), then 96 reports (1): 144 events
    assert "events expected   144" in out and "events delivered  144" in out
    assert "events lost       0" in out
    assert "OK: every tracked event arrived exactly once." in out


def test_only_a_killed_workers_in_flight_batch_may_come_twice() -> None:
    from klime_mp.demo.report import Outcome

    # expected, delivered, duplicated, failed requests, allowed duplicates
    assert Outcome("s", 48, 48, 0, 0).ok
    assert not Outcome("s", 48, 48, 1, 0).ok  # no kill: a duplicate is a failure
    assert Outcome("s", 48, 48, 20, 0, allowed_duplicates=100).ok  # the killed one's batch
    assert not Outcome("s", 48, 48, 101, 0, allowed_duplicates=100).ok
    assert not Outcome("s", 48, 47, 0, 0, allowed_duplicates=100).ok  # a loss never is


def test_a_killed_uwsgi_workers_replacement_has_a_row_of_its_own() -> None:
    # uWSGI respawns a SIGKILLed worker; the table lists the 3 started, then the new one.
    result = run_demo("--server", "uwsgi", "--requests", "60", "--workers", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "kill -9 worker" in out
    assert "(4 workers)" in out, out
