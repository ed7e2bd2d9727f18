"""One module per server the demo can run, found by name: ``--server NAME`` loads
``klime_mp.demo.launchers.NAME`` and uses its ``LAUNCHER``.

Adding a server (uvicorn, celery, ...) is adding one file here that defines
``LAUNCHER``, an object with:

- ``title``: how the banner names the server ("Gunicorn (--preload)");
- ``check()``: raise ``DemoError`` naming what to install when the server is missing,
  before anything starts;
- ``server(workers, workdir, env)``: a ``Server`` (below), not started yet. ``workdir``
  is the run's temporary directory (logs, FIFOs); ``env`` carries the collector's
  endpoint and write key for the app.

The load driver speaks HTTP to the server's ``url``: every ``POST`` of the session mix
(``/login``, ``/orgs/<id>/members``, ``/reports``) must answer 200 with
``X-Klime-Events`` (events queued) and ``X-Worker-Pid`` (the process that tracked
them), and ``GET /healthz`` 200 once it is ready. A task-queue launcher (Celery) runs a
small HTTP front that enqueues the task, waits for its result and answers with the task
worker's figures. Every track event carries ``worker_pid``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Protocol

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "example_app"


class Server(Protocol):
    """A running server (``klime_mp.demo.server.ServerProcess`` is one)."""

    @property
    def url(self) -> str: ...

    def start(self) -> object: ...

    def worker_pids(self) -> set[int]: ...

    def wait_for_workers(self, count: int) -> set[int]: ...

    def stop(self) -> int: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    title: str

    def check(self) -> None: ...

    def server(self, workers: int, workdir: Path, env: dict[str, str]) -> Server: ...


def names() -> list[str]:
    """The servers the demo can run: the modules of this package (none is imported)."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__))


def load(name: str) -> Launcher:
    if name not in names():
        raise ValueError(f"server must be one of {', '.join(names())}, got {name!r}")
    launcher: Launcher = importlib.import_module(f"{__name__}.{name}").LAUNCHER
    return launcher


def example_dir() -> Path:
    """The WSGI example app the launchers serve, shipped inside the package."""
    if not (EXAMPLE_DIR / "app.py").is_file():  # only if the package was copied partially
        from ..server import DemoError

        raise DemoError(f"the example app is missing from {EXAMPLE_DIR}: reinstall klime_mp")
    return EXAMPLE_DIR
