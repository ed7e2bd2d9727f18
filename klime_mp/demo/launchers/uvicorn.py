"""uvicorn serving the example app's ASGI version (``asgi_app:app``) with ``--workers``:
spawned worker processes (not forked), each ending in the ASGI lifespan shutdown."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..server import HOST, DemoError, ServerProcess
from . import example_dir


def uvicorn_argv(port: int, workers: int, *options: str) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(workers), "--app-dir", str(example_dir()), "--no-access-log"]
    return [*argv, *options, "asgi_app:app"]


class UvicornProcess(ServerProcess):
    def worker_pids(self) -> set[int]:
        # uvicorn spawns its workers through multiprocessing, which also starts its
        # resource tracker as a child of the master: a helper, not a worker.
        return {pid for pid in super().worker_pids() if not _resource_tracker(pid)}


def _resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"multiprocessing.resource_tracker" in cmdline.read()
    except OSError:  # gone, or no /proc: count it as a worker (the report shows 0 requests)
        return False


class UvicornLauncher:
    title = "uvicorn"

    def check(self) -> None:
        if importlib.util.find_spec("uvicorn") is None:
            raise DemoError("--server uvicorn needs uvicorn: pip install uvicorn")

    def server(self, workers: int, workdir: Path, env: dict[str, str]) -> UvicornProcess:
        def argv(port: int) -> list[str]:
            return uvicorn_argv(port, workers)

        return UvicornProcess(argv, env, workdir / "uvicorn.log")


LAUNCHER = UvicornLauncher()
