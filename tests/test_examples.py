"""The examples run as documented: the quick start, the Django and Flask apps under
real Gunicorn with several workers, and the Celery app under a real prefork worker with
redis-server as broker, each event counted at a real collector."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from klime_mp.demo import HOST, ServerProcess
from tests.conftest import CollectorProcess
from tests.servers import no_control_socket

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORKERS = 3
USERS = 6
REPORTS_PER_USER = 3


def test_quickstart_delivers_its_events(collector_process: CollectorProcess) -> None:
    env = {**os.environ, "KLIME_WRITE_KEY": "dev", "KLIME_ENDPOINT": collector_process.url}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "sent 5 events" in result.stdout
    assert collector_process.stats()["stored"] == 5
    types = [event["type"] for event in collector_process.events()]
    assert types == ["identify", "group", "track", "track", "track"]


class Browser:
    """One user's session: cookies kept between requests, no proxies."""

    def __init__(self, url: str) -> None:
        self._url = url
        handlers = (
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPCookieProcessor(CookieJar()),
        )
        self._opener = urllib.request.build_opener(*handlers)

    def post(self, path: str, body: dict[str, Any]) -> int:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(self._url + path, data, headers, method="POST")
        with self._opener.open(req, timeout=30) as reply:
            reply.read()
            status: int = reply.status
        return status


def gunicorn(example: str, app: str, *options: str, tmp_path: Path, endpoint: str) -> ServerProcess:
    extra = no_control_socket()

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", "-c", "python:klime_mp.gunicorn_conf",
            "--bind", f"{HOST}:{port}", "--workers", str(WORKERS),
            "--chdir", str(EXAMPLES / example), *extra, *options, app,
        ]  # fmt: skip

    env = {**os.environ, "KLIME_WRITE_KEY": "dev", "KLIME_ENDPOINT": endpoint}
    return ServerProcess(argv, env, tmp_path / f"{example}.log")


def use_the_app(url: str) -> None:
    """Each user signs in, joins an organisation, creates reports."""
    for user in range(USERS):
        browser = Browser(url)
        user_id = f"usr_{user}"
        login = {"user_id": user_id, "email": f"user{user}@example.com", "name": f"User {user}"}
        assert browser.post("/login", login) == 200
        assert browser.post(f"/orgs/org_{user % 2}/join", {"org_name": f"Org {user % 2}"}) == 200
        for report in range(REPORTS_PER_USER):
            assert browser.post("/reports", {"report_type": f"type_{report}"}) == 201


@pytest.mark.server
@pytest.mark.parametrize(
    ("example", "app", "options"),
    [
        ("django_app", "klime_site.wsgi", ()),  # ready() runs in each worker
        ("flask_app", "app:create_app()", ("--preload",)),  # the factory runs in the master
    ],
)
def test_framework_example_delivers_every_event_once(
    example: str,
    app: str,
    options: tuple[str, ...],
    collector_process: CollectorProcess,
    tmp_path: Path,
) -> None:
    pytest.importorskip(example.split("_")[0])  # django / flask
    server = gunicorn(example, app, *options, tmp_path=tmp_path, endpoint=collector_process.url)
    try:
        server.start()
        assert len(server.wait_for_workers(WORKERS)) == WORKERS
        use_the_app(server.url)
        status = server.stop()  # SIGTERM: every worker sends what it still holds
    finally:
        server.kill()
    assert status == 0, server.log_tail()

    # Per user: identify + Signed In, group + Organization Joined, 3 Report Generated.
    expected = USERS * (2 + 2 + REPORTS_PER_USER)
    assert collector_process.wait_for(expected, timeout=20), collector_process.stats()
    stats = collector_process.stats()
    assert (stats["stored"], stats["duplicates"]) == (expected, 0)
    events = collector_process.events()
    kinds = Counter(event.get("event", event["type"]) for event in events)
    assert kinds == {
        "identify": USERS,
        "group": USERS,
        "Signed In": USERS,
        "Organization Joined": USERS,
        "Report Generated": USERS * REPORTS_PER_USER,
    }
    reports = [event for event in events if event.get("event") == "Report Generated"]
    assert {(event["userId"], event["groupId"]) for event in reports} == {
        (f"usr_{user}", f"org_{user % 2}") for user in range(USERS)
    }


@pytest.mark.server
def test_celery_example_delivers_every_event_once(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    pytest.importorskip("redis")
    from tests.test_celery import REDIS, RedisServer

    if REDIS is None:
        pytest.skip("redis-server is not installed")
    redis = RedisServer(tmp_path)
    env = {
        **os.environ,
        "KLIME_WRITE_KEY": "dev",
        "KLIME_ENDPOINT": collector_process.url,
        "CELERY_BROKER_URL": redis.url,
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "celery.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "prefork",
             "-c", "2", "--max-tasks-per-child", "5", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"example-{os.getpid()}@%h"],
            cwd=EXAMPLES / "celery_app", env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        sent = subprocess.run(
            [sys.executable, "send_tasks.py", "--users", "4", "--reports", "3"],
            cwd=EXAMPLES / "celery_app", env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr + log.read_text(errors="replace")[-3000:]
        worker.send_signal(signal.SIGTERM)  # a warm shutdown: children leave via os._exit
        assert worker.wait(60) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        redis.stop()

    # 4 users x 5 tasks, recycled every 5 tasks: at least 4 pool processes came and went.
    assert "ran 20 tasks tracking 28 events" in sent.stdout
    assert collector_process.wait_for(28, timeout=20), collector_process.stats()
    stats = collector_process.stats()
    assert (stats["stored"], stats["duplicates"]) == (28, 0)
    kinds = Counter(event.get("event", event["type"]) for event in collector_process.events())
    assert kinds == {
        "identify": 4,
        "Signed In": 4,
        "group": 4,
        "Organization Joined": 4,
        "Report Exported": 12,
    }


def test_every_example_says_how_to_install_from_a_checkout_or_a_wheel() -> None:
    readmes = sorted(EXAMPLES.glob("*/README.md"))
    assert [path.parent.name for path in readmes] == [
        "celery_app", "django_app", "fastapi_app", "flask_app", "gunicorn_app",
    ]  # fmt: skip
    for path in readmes:
        text = path.read_text()
        assert "pip install -e ." in text and "pip install dist/klime_mp-*.whl" in text, path
        assert "pip install klime_mp " not in text, path  # not on an index: it fails


def test_the_readme_links_every_example_and_its_guide_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for example in ("celery_app", "django_app", "fastapi_app", "flask_app", "gunicorn_app"):
        assert f"(examples/{example}/README.md)" in readme, example
    for page in ("gunicorn", "uwsgi", "fastapi", "celery", "django", "flask"):
        assert f"(docs/{page}.md)" in readme and (ROOT / "docs" / f"{page}.md").is_file(), page
    assert len(readme.splitlines()) <= 300
