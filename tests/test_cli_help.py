"""``klime-mp --help`` and each command's help say what the command does today."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def help_of(*command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "klime_mp", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # argparse wraps to the terminal's width


def test_top_level_help_names_every_command_and_every_demo_server() -> None:
    text = help_of()
    for command in ("collector", "demo", "spool", "import"):
        assert f" {command} " in text
    for server in ("Gunicorn", "uWSGI", "uvicorn", "Celery"):
        assert text.count(server) == 2, server  # in the description and the demo's line


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (("collector",), ["GET /v1/events", "user_id", "since", "POST /v1/runs", "GET /v1/runs"]),
        (("demo",), ["gunicorn (the default", "uwsgi", "uvicorn", "celery", "redis-server"]),
        (("spool",), ["spool_dir", "status", "drain"]),
        (("spool", "status"), ["ENDPOINT", "the key is never written down"]),
        (("spool", "drain"), ["preStop", "$KLIME_WRITE_KEY"]),
        (("import",), ["JSON Lines", "--check", "messageId"]),
    ],
)
def test_each_command_describes_what_it_does(command: tuple[str, ...], says: list[str]) -> None:
    text = help_of(*command)
    for words in says:
        assert words in text, (command, words)
