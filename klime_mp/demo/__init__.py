"""``klime-mp demo``: watch every tracked event arrive exactly once, on your machine.

One job per file:

- ``cli``: the command's options and the run (collector, server, load, stop, report);
- ``server``: a server process in its own session, started on a free port and stopped
  gracefully (server-agnostic);
- ``session``: a helper process without HTTP (Redis, a Celery worker), the same way;
- ``launchers/``: one module per server (``celery``, ``gunicorn``, ``uvicorn``,
  ``uwsgi``); a new server is one new file there;
- ``load``: the HTTP load driver and its progress bar;
- ``report``: what reached the collector, and the verdict per server and per worker;
- ``example_app/``: the instrumented WSGI app, its ASGI version, its Celery tasks and
  their HTTP front, and the Gunicorn and uWSGI configs, shipped as package data so the
  demo runs from an installed wheel (``examples/gunicorn_app`` in a checkout links here).

The server tests use these parts too. A server's package is imported only when the
demo runs it.
"""

from __future__ import annotations

from .cli import DESCRIPTION, add_arguments, run
from .launchers import example_dir
from .launchers.gunicorn import gunicorn_argv, gunicorn_settings
from .launchers.uwsgi import uwsgi_argv, uwsgi_binary
from .load import LoadResult, Progress, drive, planned_request, request
from .report import Outcome, Tally, report, tally
from .server import HOST, WRITE_KEY, DemoError, ServerProcess, free_port, server_env

__all__ = [
    "DESCRIPTION",
    "HOST",
    "WRITE_KEY",
    "DemoError",
    "LoadResult",
    "Outcome",
    "Progress",
    "ServerProcess",
    "Tally",
    "add_arguments",
    "drive",
    "example_dir",
    "free_port",
    "gunicorn_argv",
    "gunicorn_settings",
    "planned_request",
    "report",
    "request",
    "run",
    "server_env",
    "tally",
    "uwsgi_argv",
    "uwsgi_binary",
]
