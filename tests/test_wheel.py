"""A new user's path: build the wheel, install it in a fresh venv, run ``klime-mp demo``
from a directory outside the checkout. The demo serves the example app shipped inside
the package, so nothing may depend on the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLEAN_COPY = shutil.ignore_patterns(
    ".git", ".venv*", ".tox", "*cache*", "build", "dist", "*.egg-info", "*.sqlite3*"
)

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]


def run(argv: list[str | Path], cwd: Path, timeout: float) -> str:
    # No PYTHONPATH: the checkout must not leak into the installed package's imports.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From a clean copy, as CI's fresh clone: a build/ or egg-info left in a developer's
    # checkout would smuggle files into the wheel that package data forgot.
    source = tmp_path_factory.mktemp("source") / "klime_mp"
    shutil.copytree(ROOT, source, symlinks=True, ignore=CLEAN_COPY)
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source]
    run(pip_wheel, out, timeout=300)
    (built,) = out.glob("klime_mp-*.whl")
    return built


def test_wheel_carries_the_license_and_the_demo_app(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    for shipped in ("app.py", "gunicorn.conf.py", "uwsgi.ini"):
        assert f"klime_mp/demo/example_app/{shipped}" in names


def test_demo_runs_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, timeout=120)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    run([*pip, f"{wheel}[demo]"], tmp_path, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [venv / "bin" / "python", "-c", "import klime_mp; print(klime_mp.__file__)"],
        elsewhere,
        timeout=60,
    )
    assert Path(where.strip()).is_relative_to(venv)  # the wheel's copy, not the checkout

    out = run(
        [venv / "bin" / "klime-mp", "demo", "--requests", "30", "--workers", "2"],
        elsewhere,
        timeout=180,
    )
    assert "requests sent     30 (30 ok, 0 failed)" in out
    assert "OK: every tracked event arrived exactly once." in out
