"""Gunicorn server hooks that deliver every queued event before a worker goes away.

Two ways to use it (gunicorn reads one configuration file):

* as the whole configuration: ``gunicorn -c python:klime_mp.gunicorn_conf app:app``.
  The ``python:`` prefix matters: without it gunicorn reads the value as a file path.
  Bind address, worker count and the rest keep gunicorn's defaults and sources
  (``--bind``/``-w``, ``$PORT``, ``$WEB_CONCURRENCY``, ``$GUNICORN_CMD_ARGS``).
* from your own ``gunicorn.conf.py``: import these hooks and call them from yours
  (see docs/servers.md for a snippet that chains to hooks you already have).

Gunicorn applies every module-level name of a config module that matches one of its
settings, and checks each hook's arity: this module's public names are exactly the
hooks below, with gunicorn's signatures, and everything else is private.

What each hook is for:

* ``post_fork``: nothing needs resetting here (klime_mp notices the fork by itself);
  it takes this worker's exit budget from ``graceful_timeout`` and ``timeout`` and
  warns once if that budget is too short to send anything.
* ``worker_exit``: the worker's last Python-level moment on every graceful path
  (SIGTERM from the arbiter, TTOU, HUP, ``max_requests`` recycling, SIGQUIT/SIGINT).
  It sends what is queued within the budget, i.e. before the arbiter's SIGKILL.
* ``worker_abort``: the arbiter is killing a worker that missed its ``timeout``
  (SIGABRT, SIGKILL about a second later); it logs how many events are at risk.
* ``on_exit``: the master's own events (tracked at import with ``--preload``).
"""

from __future__ import annotations

import logging as _logging
import os as _os
import threading as _threading
from typing import Any as _Any

from klime_mp.lifecycle import forksafe as _forksafe

_log = _logging.getLogger(__name__)

# worker_exit runs after in-flight requests (gthread waits up to graceful_timeout for
# them); the arbiter SIGKILLs at graceful_timeout after its SIGTERM. Half of it is
# left for the requests, half for the flush.
_BUDGET_SHARE = 0.5
# Below this a flush cannot reasonably reach a server; say so once per worker.
_MIN_USEFUL_BUDGET_S = 1.0
# After worker_abort the arbiter SIGKILLs on its next loop, about a second later.
_ABORT_BUDGET_S = 0.5

_REPORT_MARGIN_S = 0.5
_DEFAULT_BUDGET_S = 15.0  # gunicorn's default graceful_timeout (30 s) times the share

_budget_s = _DEFAULT_BUDGET_S
_aborted = False


def post_fork(server: _Any, worker: _Any) -> None:
    """In the new worker: note its exit budget (no client work happens here)."""
    global _budget_s, _aborted
    _aborted = False
    _budget_s = _exit_budget(worker.cfg)
    if _budget_s < _MIN_USEFUL_BUDGET_S:
        _log.warning(
            "Klime: worker %d has %.1f s to send queued events at exit; raise "
            "graceful_timeout (and timeout) to at least %.0f s",
            _os.getpid(),
            _budget_s,
            _MIN_USEFUL_BUDGET_S / _BUDGET_SHARE,
        )


def worker_exit(server: _Any, worker: _Any) -> None:
    """Send every event this worker queued, within its budget."""
    budget = _ABORT_BUDGET_S if _aborted else _budget_s
    if not _flush_within(budget):
        _log.error(
            "Klime: worker %d could not send its queued events within %.1f s; the "
            "ones still queued are lost when it exits",
            _os.getpid(),
            budget,
        )


def worker_abort(worker: _Any) -> None:
    """The worker missed its timeout and is about to be killed: count what it holds."""
    global _aborted
    _aborted = True
    queued = _queued()
    if queued:
        _log.error(
            "Klime: worker %d aborted by gunicorn (timeout) with %d events queued; "
            "they are lost unless sent in the %.1f s before SIGKILL",
            _os.getpid(),
            queued,
            _ABORT_BUDGET_S,
        )


def on_exit(server: _Any) -> None:
    """In the master, at the very end: send what the master itself queued."""
    _forksafe.exit_flush_now()


# -- private helpers ---------------------------------------------------------------------


def _flush_within(budget: float) -> bool:
    """Run this process's exit flush, waiting at most ``budget`` seconds for it.

    The flush runs in a helper thread so the budget holds even when a client's own
    ``shutdown_timeout`` is longer; if time runs out the worker carries on exiting
    (its ``atexit`` flush then finds the clients already shut down)."""
    flusher = _threading.Thread(
        target=_forksafe.exit_flush_now, args=(budget,), name="klime-exit-flush", daemon=True
    )
    try:
        flusher.start()
    except RuntimeError:  # no new threads at interpreter shutdown: flush from here
        _forksafe.exit_flush_now(budget)
        return True
    # The flush keeps to the budget itself and reports what it could not send; the
    # margin is for that report (on_error, the log) to finish before the worker exits.
    flusher.join(budget + _REPORT_MARGIN_S)
    return not flusher.is_alive()


def _queued() -> int:
    """Events waiting in this process's queues, across every client."""
    return _forksafe.queued_events()


def _exit_budget(cfg: _Any) -> float:
    """Seconds the exit flush may take: a share of the shorter of graceful_timeout and
    timeout (the arbiter also kills a worker that stops notifying for ``timeout``)."""
    limits = [
        float(value)
        for value in (getattr(cfg, "graceful_timeout", 0), getattr(cfg, "timeout", 0))
        if value and float(value) > 0
    ]
    return _BUDGET_SHARE * min(limits) if limits else _DEFAULT_BUDGET_S
