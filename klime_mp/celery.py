"""Celery: a prefork child's queued events are sent before the child is recycled or stopped.

Why a signal: billiard's pool worker ends inside its process target (``Worker.__call__``)
with ``os._exit``, whether it was recycled (``--max-tasks-per-child``,
``--max-memory-per-child``) or stopped at a warm shutdown. ``Process._bootstrap`` would run
``multiprocessing.util``'s finalizers only after the target returned, so they never run,
and neither does ``atexit``. Just before ``os._exit`` the child calls the pool's
``on_exit``, through which Celery sends ``worker_process_shutdown``; connecting that
signal is the one exit path a prefork child always takes.

Nothing to configure: ``klime_mp.host_hooks`` connects it on the first use of a client in a
process that has imported Celery. Calling ``connect()`` yourself is harmless.
This module is ``klime_mp.celery``; ``import celery`` elsewhere still means Celery.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol, cast

from klime_mp.lifecycle import forksafe

DISPATCH_UID = "klime_mp.celery.flush_on_process_shutdown"


class CelerySignal(Protocol):
    """The part of ``celery.utils.dispatch.Signal`` used here (Celery ships no types)."""

    def connect(
        self, receiver: Callable[..., Any], *, weak: bool = ..., dispatch_uid: str = ...
    ) -> Any: ...


def connect() -> bool:
    """Connect the exit flush to ``worker_process_shutdown``; idempotent.

    False when Celery is not installed."""
    try:
        # By name: Celery is optional and untyped; this module never loads it at import.
        signals = importlib.import_module("celery.signals")
    except ImportError:
        return False
    shutdown = cast(CelerySignal, signals.worker_process_shutdown)
    # weak=False: the receiver is a module function, but Celery would otherwise hold it
    # weakly; dispatch_uid: one receiver however often this runs (in a parent and again
    # in each child that inherits the connection).
    shutdown.connect(flush_on_process_shutdown, weak=False, dispatch_uid=DISPATCH_UID)
    return True


def flush_on_process_shutdown(**_signal_arguments: Any) -> None:
    """Send this process's queued events (each client within its shutdown_timeout)."""
    forksafe.exit_flush_now()
