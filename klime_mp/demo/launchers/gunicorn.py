"""Gunicorn serving the example app with ``--preload`` and klime_mp's hooks
(``-c python:klime_mp.gunicorn_conf``). Gunicorn is imported only when the demo runs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ..server import HOST, DemoError, ServerProcess
from . import example_dir


def gunicorn_argv(
    port: int,
    workers: int | None,
    *options: str,
    app: str = "app:app",
    config: str = "python:klime_mp.gunicorn_conf",
) -> list[str]:
    """Gunicorn serving the example app through klime_mp's hooks (``-c python:...``);
    ``workers=None`` leaves the count to the config file."""
    settings = gunicorn_settings()
    argv = [sys.executable, "-m", "gunicorn", "-c", config, "--bind", f"{HOST}:{port}"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv += ["--chdir", str(example_dir())]
    if "control_socket_disable" in settings:
        argv.append("--no-control-socket")  # one shared default path: parallel runs clash
    return [*argv, *options, app]


def gunicorn_settings() -> set[str]:
    """The setting names of the installed Gunicorn (imported here, not at import)."""
    try:
        config = importlib.import_module("gunicorn.config")  # by name: it ships no types
    except ImportError:
        raise DemoError("the demo needs Gunicorn: pip install gunicorn") from None
    return {setting.name for setting in config.KNOWN_SETTINGS}


class GunicornLauncher:
    title = "Gunicorn (--preload)"

    def check(self) -> None:
        gunicorn_settings()

    def server(self, workers: int, workdir: Path, env: dict[str, str]) -> ServerProcess:
        def argv(port: int) -> list[str]:
            return gunicorn_argv(port, workers, "--preload")

        return ServerProcess(argv, env, workdir / "gunicorn.log")


LAUNCHER = GunicornLauncher()
