"""Fork handling lives here, and only here.

A client keeps its queue, locks, sender thread and HTTP session in a per-process value
(``ProcessLocal``). Every process that uses a client gets its own, built on first use:

* ``os.register_at_fork(after_in_child=...)`` runs once for the whole registry of live
  clients (a ``WeakSet``), never once per client: the registration cannot be undone and
  per-client hooks would pile up. In the child it only drops references, because it
  runs before anything else there: no locks, no logging, no I/O, no threads.
* A PID check on every call catches forks that run no Python hooks (uWSGI forks from C
  by default), so the first call in such a child rebuilds the same way. The PID and
  the value are one tuple, read in one step, so a thread can never pair this
  process's PID with the parent's value.
* The rebuild never acquires an inherited lock (another thread may have held it at the
  fork, and it would stay held forever): the lock guarding a rebuild is looked up by
  PID, so each process creates its own, and the parent's value is let go through
  ``abandon()``, which takes no lock either.
* Exit: queued events are flushed by whichever exit path the process really takes,
  once, by the process that queued them (each hook flushes only the values built in
  the current process, because hooks registered in a parent also run in its children):
  ``atexit`` for ordinary exits; ``multiprocessing.util.Finalize`` in multiprocessing
  children, which leave through ``os._exit`` and never run ``atexit``; and, in those
  children only, SIGTERM, which ``Pool.terminate()`` (and so ``with Pool() as p``)
  sends to workers that may still hold queued events.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util
import os
import threading
import time
import weakref
from typing import Any, Callable, Generic, Protocol, TypeVar, cast

from klime_mp.lifecycle import sigterm
from klime_mp.lifecycle.gevent_resolver import prepare_exit_send
from klime_mp.lifecycle.sigterm import SIGTERM_GRACE_S
from klime_mp.options import DEFAULT_FLUSH_TIMEOUT_S

logger = logging.getLogger(__name__)


class PerProcessState(Protocol):
    """What the registry needs of a per-process value (a client's worker)."""

    def abandon(self) -> None:
        """Called in a child for the parent's state: release it without its locks."""

    def size(self) -> int:
        """Events waiting to be sent."""

    def begin_flush(self) -> Callable[[float], bool]:
        """Start sending what is queued; return the wait for it (given a deadline)."""


T = TypeVar("T", bound=PerProcessState)

DEFAULT_EXIT_TIMEOUT_S = 5.0

_live: weakref.WeakSet[ProcessLocal[Any]] = weakref.WeakSet()
# Those with a value in this process, held strongly: a client dropped by its code (a
# local variable, a function that returned) still has events to flush at exit.
_owned: set[ProcessLocal[Any]] = set()
_locks_by_pid: dict[int, threading.Lock] = {}
_exit_hook_pids: set[int] = set()  # processes whose multiprocessing exit hooks are set
_multiprocessing_child = 0  # this PID, once multiprocessing (or billiard) started it
# Called with the PID on the first value built in each process: the host hooks
# (klime_mp.host_hooks) register here, so this module never imports what sits above it.
_first_use_hooks: list[Callable[[int], None]] = []

# The PID whose exit flush has begun; 0 until then. Read by callers after queueing:
# see ``ProcessLocal.exit_if_late``.
exit_flushed_pid = 0
_exit_flush_running = 0  # the PID running the exit flush right now

# Tests replace this to simulate a fork without forking (the PID source is injectable).
getpid: Callable[[], int] = os.getpid


def process_lock() -> threading.Lock:
    """A lock that belongs to the current process; created, never inherited.

    ``dict.setdefault`` is atomic, so two threads racing in a new child agree on one."""
    pid = getpid()
    lock = _locks_by_pid.get(pid)
    if lock is None:
        lock = _locks_by_pid.setdefault(pid, threading.Lock())
    return lock


class ProcessLocal(Generic[T]):
    """A value owned by one process and rebuilt by ``factory`` in every other one."""

    def __init__(
        self,
        factory: Callable[[], T],
        on_exit: Callable[[T, float | None], None],
        *,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT_S,
    ) -> None:
        self._factory = factory
        self._on_exit = on_exit
        self.exit_timeout = exit_timeout  # how long on_exit may take; bounds SIGTERM
        # (owner PID, value) in one tuple, replaced whole. PID 0 is no process's own,
        # so the placeholder value is never returned.
        self._state: tuple[int, T] = _EMPTY
        self._inherited: T | None = None  # the parent's value, seen by the fork hook
        _live.add(self)

    def get(self) -> T:
        """This process's value, built on first use here."""
        state = self._state
        if state[0] == getpid():
            return state[1]
        return self._build()

    def peek(self) -> T | None:
        """This process's value if it has one; never builds."""
        state = self._state
        return state[1] if state[0] == getpid() else None

    def release(self) -> None:
        """Stop keeping this alive for the exit flush: its value has nothing left to
        flush (it was shut down). Without this, a program that creates and shuts down
        clients over and over would keep every one of them until exit."""
        _owned.discard(self)

    def exit_if_late(self) -> None:
        """Run the exit hook now if this process's exit flush has already run.

        Call after handing work to the value. The exit flush runs once; a call made
        after it (from an ``atexit`` handler registered before klime_mp was imported:
        ``atexit`` runs handlers last-registered first) would queue events that no one
        sends. Running ``on_exit`` here sends them from the calling thread when no
        thread can start (Python 3.12 at shutdown), bounded like any exit flush."""
        if exit_flushed_pid == getpid():
            self._exit()

    def _build(self) -> T:
        pid = getpid()
        with process_lock():
            state = self._state
            if state[0] == pid:
                return state[1]
            stale = self._inherited if self._inherited is not None else _value_of(state)
            self._inherited = None
            if stale is not None:
                _abandon(stale)
            value = self._factory()
            self._state = (pid, value)
            _owned.add(self)
        _install_exit_hooks(pid)
        return value

    def _forget_after_fork(self) -> None:
        value = _value_of(self._state)
        if value is not None:
            self._inherited, self._state = value, _EMPTY

    def _exit(self, deadline: float | None = None) -> None:
        state = self._state
        if state[0] != getpid():
            return
        self._state = _EMPTY  # a later call builds afresh and exits it itself
        _owned.discard(self)
        budget = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        self._on_exit(state[1], budget)


# pid 0 never matches getpid(), so the cast placeholder is never handed out.
_EMPTY: tuple[int, Any] = (0, cast(Any, None))


def _value_of(state: tuple[int, T]) -> T | None:
    return state[1] if state[0] else None


def _abandon(stale: PerProcessState) -> None:
    # The parent's leftovers must not fail the child's call that found them.
    try:
        stale.abandon()
    except Exception:
        logger.debug("Klime: could not release the parent's state", exc_info=True)


def _after_fork_in_child() -> None:
    # Runs first thing in every os.fork() child: references only (see module doc).
    global exit_flushed_pid
    exit_flushed_pid = 0
    _locks_by_pid.clear()
    _owned.clear()  # the parent's to keep; this process owns nothing yet
    for local in list(_live):
        local._forget_after_fork()
    sigterm.drop_in_child()


def _flush_at_exit(budget: float | None = None) -> None:
    global exit_flushed_pid, _exit_flush_running
    exit_flushed_pid = _exit_flush_running = getpid()
    prepare_exit_send()
    try:
        shut_down_owned(budget)
    finally:
        _exit_flush_running = 0


# -- for server integrations (klime_mp.gunicorn_conf, klime_mp.uwsgi, klime_mp.wsgi) --


def exit_flush_now(budget: float | None = None) -> None:
    """Run this process's exit flush now, for hosts whose dependable exit path is a
    hook of their own (Gunicorn's ``worker_exit``, uWSGI's ``uwsgi.atexit``). Each
    value is flushed once: the ``atexit`` flush later finds nothing left.

    ``budget``: seconds the whole flush may take (the host kills the process after
    it); each value's ``on_exit`` gets what is left of it, so what cannot be sent in
    time is reported as lost before the kill instead of vanishing with the process."""
    _flush_at_exit(budget)


def shut_down_owned(budget: float | None = None) -> None:
    """Run the exit hook of every value this process owns (its shutdown: send what is
    queued, and what dead processes left in the spool), within ``budget`` seconds in
    all, without marking the process as exiting: a later call builds afresh.

    For a host whose last code in a process is not an exit hook but a shutdown event
    that may also come in a process that carries on (the ASGI lifespan shutdown: the
    end of a uvicorn worker, but also of each ``TestClient`` block in a test run)."""
    deadline = None if budget is None else time.monotonic() + budget
    for local in list(_live):
        local._exit(deadline)  # each one flushes only what this process owns


def owned_values() -> list[PerProcessState]:
    """The values this process owns now (never builds one): what a per-request flush
    or a dying worker's report must cover."""
    return [value for value in (local.peek() for local in list(_live)) if value is not None]


def queued_events() -> int:
    """Events waiting in this process's queues, across every client."""
    return sum(value.size() for value in owned_values())


def flush_process(timeout: float | None = None) -> bool:
    """Flush every client of the current process, all within one ``timeout`` (10 s
    when None, as ``flush()``).

    Every client's sender is woken first and then waited for, so one client stuck in an
    outage does not use up the others' time. True when everything queued before the
    call was delivered."""
    wait = DEFAULT_FLUSH_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + wait
    waits = [value.begin_flush() for value in owned_values()]
    return all([wait_for(deadline) for wait_for in waits])  # a list: wait for every one


def on_first_use_in_process(hook: Callable[[int], None]) -> None:
    """Call ``hook(pid)`` whenever a process builds its first value; ``hook`` must
    not raise. Registering the same hook again changes nothing."""
    if hook not in _first_use_hooks:
        _first_use_hooks.append(hook)


# -- multiprocessing children ------------------------------------------------------------


def _install_exit_hooks(pid: int) -> None:
    """Multiprocessing children skip atexit: register a finalizer there instead.

    It is registered in the child itself, after multiprocessing has cleared the
    finalizers it inherited from its parent."""
    for hook in _first_use_hooks:  # uWSGI's and Celery's own exit paths, if running there
        hook(pid)
    in_child = (
        pid == _multiprocessing_child
        or multiprocessing.parent_process() is not None
        or _importing_the_parents_main()
    )
    if pid in _exit_hook_pids or not in_child:
        return
    _exit_hook_pids.add(pid)
    multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=100)
    _install_sigterm_flush()


def _importing_the_parents_main() -> bool:
    # A spawn or forkserver child imports its parent's main module before it counts as
    # a child (parent_process() is still None), and from Python 3.10 on a spawn child
    # runs no after-fork hook later (``SpawnProcess._after_fork`` does nothing): a value
    # built during that import must be hooked then. multiprocessing marks the import
    # itself this way (its own check against starting processes while importing).
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def _multiprocessing_child_started(_anchor: object) -> None:
    # multiprocessing runs this in each child it starts by forking (fork, forkserver;
    # spawn only before Python 3.10), just after clearing the finalizers inherited from
    # the parent; so does billiard (Celery's prefork pool), which shares
    # multiprocessing.util's registries but not its parent_process(). A forkserver
    # child may have built a value already, while importing the parent's main module,
    # and had its finalizer cleared since: hook it again now.
    global _multiprocessing_child
    pid = _multiprocessing_child = getpid()
    _exit_hook_pids.discard(pid)
    if any(local.peek() is not None for local in list(_live)):
        _install_exit_hooks(pid)


class _Anchor:
    """register_after_fork holds its object weakly: this one lives as long as we do."""


_anchor = _Anchor()


def _install_sigterm_flush() -> None:
    sigterm.install(_flush_at_exit, _sigterm_budget, _exit_flush_running_here)


def _sigterm_budget() -> float:
    # Every client's own shutdown_timeout, plus a little for the flush to report.
    return SIGTERM_GRACE_S + sum(
        local.exit_timeout for local in list(_live) if local.peek() is not None
    )


def _exit_flush_running_here() -> bool:
    return _exit_flush_running == getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
multiprocessing.util.register_after_fork(_anchor, _multiprocessing_child_started)
atexit.register(_flush_at_exit)
