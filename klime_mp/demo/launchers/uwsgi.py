"""uWSGI serving the example app with its ini (``import = klime_mp.uwsgi``), stopped
gracefully through its master FIFO."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..server import HOST, DemoError, ServerProcess
from . import example_dir


def uwsgi_binary() -> str:
    """The uWSGI built for this Python (pip installs it next to the interpreter)."""
    beside = Path(sys.executable).with_name("uwsgi")
    found = str(beside) if beside.is_file() else shutil.which("uwsgi")
    if found is None:
        raise DemoError("--server uwsgi needs uWSGI for this Python: pip install uwsgi")
    return found


def uwsgi_argv(
    port: int, workers: int, fifo: Path, *options: str, ini: Path | None = None
) -> list[str]:
    """uWSGI with the example's ini (or ``ini``); ``fifo`` is its master FIFO, through
    which ``q`` stops it gracefully."""
    ini = ini if ini is not None else example_dir() / "uwsgi.ini"
    argv = [uwsgi_binary(), "--ini", str(ini)]
    argv += ["--http-socket", f"{HOST}:{port}", "--processes", str(workers)]
    # A worker being respawned when "q" arrives misses it, and the master then waits
    # worker-reload-mercy for it (60 s by default): longer than any stop we wait for.
    mercy = ["--worker-reload-mercy", "15"]
    return [*argv, "--master-fifo", str(fifo), "--disable-logging", *mercy, *options]


class UwsgiLauncher:
    title = "uWSGI"

    def check(self) -> None:
        uwsgi_binary()

    def server(self, workers: int, workdir: Path, env: dict[str, str]) -> ServerProcess:
        fifo = workdir / "uwsgi.fifo"

        def argv(port: int) -> list[str]:
            return uwsgi_argv(port, workers, fifo)

        return ServerProcess(argv, env, workdir / "uwsgi.log", fifo)


LAUNCHER = UwsgiLauncher()
