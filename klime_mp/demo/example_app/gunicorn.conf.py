"""Gunicorn settings for the example app: your own config, with klime_mp's hooks in it.

Gunicorn reads one config file. If you have your own, import klime_mp's hooks and call
them from yours, as below. Without one, ``-c python:klime_mp.gunicorn_conf`` alone is
enough (see docs/servers.md).
"""

import os
from typing import Any

from klime_mp import gunicorn_conf as klime

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
preload_app = True  # the app (and klime_mp.configure()) loads once, in the master
graceful_timeout = 30  # klime_mp sends at exit within half of this
# The durable spool: events survive a worker's SIGKILL (timeout, OOM killer). Set
# KLIME_SPOOL_DIR in Gunicorn's environment, or here, to a directory the workers and
# their successors share (the demo sets it in the environment):
# raw_env = ["KLIME_SPOOL_DIR=/var/lib/myapp/klime"]


def post_fork(server: Any, worker: Any) -> None:
    klime.post_fork(server, worker)
    # ... your own post_fork work goes here


def worker_exit(server: Any, worker: Any) -> None:
    # ... your own cleanup first, if it may track events
    klime.worker_exit(server, worker)


# No hooks of your own for these: take klime_mp's as they are.
worker_abort = klime.worker_abort
on_exit = klime.on_exit
