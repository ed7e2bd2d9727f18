"""Fork handling lives here, and only here.

A client keeps its queue, locks, sender thread and HTTP session in a per-process value
(``ProcessLocal``). Every process that uses a client gets its own, built on first use:

* ``os.register_at_fork(after_in_child=...)`` runs once for the whole registry of live
  clients (a ``WeakSet``), never once per client: the registration cannot be undone and
  per-client hooks would pile up. In the child it only drops references, because it
  runs before anything else there: no locks, no logging, no I/O, no threads.
* A PID check on every call catches forks that run no Python hooks (uWSGI forks from C
  by default), so the first call in such a child rebuilds the same way.
* The rebuild never acquires an inherited lock (another thread may have held it at the
  fork, and it would stay held forever): the lock guarding a rebuild is looked up by
  PID, so each process creates its own.
* Exit: queued events are flushed by whichever exit path the process really takes:
  ``atexit`` for ordinary exits, ``multiprocessing.util.Finalize`` for multiprocessing
  children (they leave through ``os._exit`` after running finalizers, never running
  ``atexit``). Each hook flushes only what the current process owns, because ``atexit``
  handlers registered in a parent also run in a forked child that exits normally.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util
import os
import threading
import weakref
from typing import Callable, Generic, Protocol, TypeVar


class PerProcessState(Protocol):
    def abandon(self) -> None:
        """Called in a child for the parent's state: release it without its locks."""


T = TypeVar("T", bound=PerProcessState)

_live: weakref.WeakSet[ProcessLocal[PerProcessState]] = weakref.WeakSet()
_locks_by_pid: dict[int, threading.Lock] = {}
_finalizer_pids: set[int] = set()

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

    def __init__(self, factory: Callable[[], T], on_exit: Callable[[T], None]) -> None:
        self._factory = factory
        self._on_exit = on_exit
        self._value: T | None = None
        self._owner_pid = 0
        self._inherited: T | None = None  # the parent's value, seen by the fork hook
        _live.add(self)  # type: ignore[arg-type]  # WeakSet is invariant; T is bounded

    def get(self) -> T:
        """This process's value, built on first use here."""
        value = self._value
        if value is not None and self._owner_pid == getpid():
            return value
        return self._build()

    def peek(self) -> T | None:
        """This process's value if it has one; never builds."""
        value = self._value
        return value if value is not None and self._owner_pid == getpid() else None

    def _build(self) -> T:
        pid = getpid()
        with process_lock():
            if self._value is not None and self._owner_pid == pid:
                return self._value
            stale = self._inherited or self._value  # the latter after a C-level fork
            self._inherited = None
            if stale is not None:
                stale.abandon()
            self._value = self._factory()
            self._owner_pid = pid
        _install_exit_hooks(pid)
        return self._value

    def _forget_after_fork(self) -> None:
        if self._value is not None:
            self._inherited, self._value = self._value, None

    def _exit(self) -> None:
        value = self.peek()
        if value is not None:
            self._on_exit(value)


def _after_fork_in_child() -> None:
    # Runs first thing in every os.fork() child: references only (see module doc).
    _locks_by_pid.clear()
    for local in list(_live):
        local._forget_after_fork()


def _flush_at_exit() -> None:
    for local in list(_live):
        local._exit()  # each one flushes only what this process owns


def _install_exit_hooks(pid: int) -> None:
    """Multiprocessing children skip atexit: register a finalizer there instead.

    It is registered in the child itself, after multiprocessing has cleared the
    finalizers it inherited from its parent."""
    if pid in _finalizer_pids or multiprocessing.parent_process() is None:
        return
    _finalizer_pids.add(pid)
    multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=100)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
