"""The README's set-up and quick start run as written, in order, in a fresh shell.

Every ``bash`` and ``python`` block of README.md is marked on the line above it:
``<!-- readme-test: run -->`` (run here) or ``<!-- readme-test: skip: why -->``. The
blocks marked ``run`` are joined into one bash script, run in a copy of the checkout
with a PATH that holds no virtual environment, so a missing ``activate`` or a command
that only works from a developer's shell fails here. Python blocks run through the
shell's ``python``, as a user who saved them to a file would. Port 8800 becomes a free
port, so parallel runs do not clash; everything stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(?:^<!-- readme-test: (?P<mark>[^>]*?) -->\n)?^```(?P<lang>\w+)\n(?P<body>.*?)^```$",
    re.M | re.S,
)
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", ".tox", "*cache*", "*.egg-info", "build", "dist", "*.sqlite3*", "*.pyc"
)

pytestmark = [pytest.mark.server, pytest.mark.timeout(900)]


def blocks() -> list[tuple[str, str, str]]:
    """(mark, language, code) of every fenced block, in order."""
    text = README.read_text()
    return [(m["mark"] or "", m["lang"], m["body"]) for m in BLOCK.finditer(text)]


def test_every_shell_and_python_block_says_whether_it_runs() -> None:
    unmarked = [
        body.splitlines()[0]
        for mark, lang, body in blocks()
        if lang in ("bash", "sh", "python") and not re.match(r"run$|skip: \S", mark)
    ]
    assert unmarked == [], "mark these README blocks run or skip: <reason>"


def script(port: int) -> str:
    lines = ["set -e -o pipefail"]
    for mark, lang, body in blocks():
        if mark != "run":
            continue
        if lang == "python":
            body = f"python - <<'README_PYTHON'\n{body}README_PYTHON\n"
        lines.append(body.replace("8800", str(port)))
    return "\n".join(lines)


def fresh_shell_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a new terminal: no venv active, ``python3`` the base Python
    of this test run (so CI's 3.9 and 3.13 passes try the README on those too)."""
    shims = tmp_path / "shims"
    shims.mkdir()
    base = Path(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    (shims / "python3").symlink_to(base if base.is_file() else Path(sys.executable))
    venvs = {str(Path(sys.prefix, "bin")), os.environ.get("VIRTUAL_ENV", "") + "/bin"}
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d not in venvs]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("KLIME_")
    }
    env.update(PATH=os.pathsep.join([str(shims), *path]), NO_PROXY="127.0.0.1,localhost")
    # A block that forgets to activate the venv must fail here, not install into the
    # machine's own Python through whatever pip is on PATH.
    env["PIP_REQUIRE_VIRTUALENV"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_readme_set_up_and_quick_start_run_in_a_fresh_shell(tmp_path: Path) -> None:
    checkout = tmp_path / "klime_mp"
    shutil.copytree(ROOT, checkout, symlinks=True, ignore=COPY_IGNORE)
    (tmp_path / "readme.sh").write_text(script(free_port()))
    log = tmp_path / "readme.log"
    with log.open("wb") as out:
        shell = subprocess.Popen(
            ["bash", str(tmp_path / "readme.sh")],
            cwd=checkout,
            env=fresh_shell_env(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the background collector is in this group too
        )
        try:
            status = shell.wait(780)
        finally:
            with contextlib.suppress(ProcessLookupError):  # what a failed script left running
                os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    output = log.read_text(errors="replace")
    assert status == 0, output[-4000:]
    assert "OK: every tracked event arrived exactly once." in output  # klime-mp demo
    assert "sent 5 events" in output  # examples/quickstart.py
    # The two quick-start snippets send 3 and 1 events, quickstart.py 5: 9 stored.
    stats = [json.loads(line) for line in output.splitlines() if line.startswith('{"')]
    assert stats[0]["stored"] == 0 and stats[-1]["stored"] == 9, stats
