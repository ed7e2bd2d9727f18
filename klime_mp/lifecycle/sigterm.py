"""SIGTERM in a multiprocessing child: flush this process's events, then die of SIGTERM.

Why: ``Pool.terminate()``, which ``with Pool() as p`` calls on leaving the block,
SIGTERMs workers that are idle but may still hold queued events; with the default
action they vanish with them. ``forksafe`` installs this in the multiprocessing children
that own a client, and drops it in every forked child (which owns none yet), so an idle
worker that never used a client dies exactly as it would without klime_mp.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Callable

# Added to the clients' own shutdown timeouts before a SIGTERM flush is cut short; also
# how long the watch waits for the handler to begin.
SIGTERM_GRACE_S = 0.5

# Set by install(): the exit flush, its time budget, and whether it is running here.
_flush: Callable[[], None] = lambda: None  # noqa: E731  # replaced before any signal
_budget: Callable[[], float] = lambda: SIGTERM_GRACE_S  # noqa: E731
_exiting: Callable[[], bool] = lambda: False  # noqa: E731


def install(
    flush: Callable[[], None], budget: Callable[[], float], exiting: Callable[[], bool]
) -> None:
    """Flush on SIGTERM, then die of it. Only where SIGTERM still has its default action
    (a handler someone installed is theirs to keep) and only from the main thread (the
    only one that may set handlers)."""
    global _flush, _budget, _exiting
    if threading.current_thread() is not threading.main_thread():
        return
    _flush, _budget, _exiting = flush, budget, exiting
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _flush_then_terminate)
            _start_sigterm_watch()
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        return


# A Python handler runs only when the main thread is back in the interpreter. An idle
# pool worker waits in C for the task queue's lock (sem_wait, retried on EINTR): a
# SIGTERM landing just before that wait begins only marks the handler as due, and the
# process waits forever where the default action would have killed it (issue #19). So
# the signal also goes to a pipe (the wakeup fd) that a thread watches: when the handler
# has not begun soon after, that thread flushes and ends the process.
_sigterm_watch: tuple[int, int] | None = None  # this process's pipe (read, write)
_sigterm_claim = threading.Lock()  # the handler or the watch: whoever takes it flushes
_sigterm_taken = threading.Event()  # the handler took it
_sigterm_watch_done = False  # the watch's flush is over: the process may die now
_flushing = False  # a SIGTERM flush (the handler's or the watch's) is running
_handling = False  # the first SIGTERM's handler is running (in the main thread)


def _start_sigterm_watch() -> None:
    global _sigterm_watch
    previous = signal.set_wakeup_fd(-1)
    if previous != -1:  # someone else's (an event loop's): theirs; the handler alone then
        signal.set_wakeup_fd(previous)
        return
    read_fd, write_fd = _sigterm_watch = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    name = "klime-sigterm-watch"
    threading.Thread(target=_watch_sigterm, args=(read_fd,), name=name, daemon=True).start()


def _watch_sigterm(read_fd: int) -> None:
    global _sigterm_watch_done
    signals = b""
    while signal.SIGTERM not in signals:  # one byte per signal (SIGINT's too)
        signals = os.read(read_fd, 64)
    if _sigterm_taken.wait(SIGTERM_GRACE_S) or not _sigterm_claim.acquire(blocking=False):
        return  # the main thread runs the handler: its flush, its exit
    _flush_bounded()
    _sigterm_watch_done = True
    main = threading.main_thread().ident
    if main is not None:  # EINTR for its wait: the handler runs there and dies of SIGTERM
        signal.pthread_kill(main, signal.SIGTERM)
    if not _sigterm_taken.wait(SIGTERM_GRACE_S):  # a wait that never checks signals
        os.kill(os.getpid(), signal.SIGKILL)


def drop_in_child() -> None:
    # In a forked child, which owns no client yet: SIGTERM's default action back, as
    # without klime_mp, and the parent's watch let go. Its first client installs anew.
    global _sigterm_watch, _sigterm_claim, _sigterm_taken, _sigterm_watch_done, _flushing
    global _handling
    _sigterm_claim, _sigterm_taken, _sigterm_watch_done = threading.Lock(), threading.Event(), False
    _flushing = _handling = False
    try:
        if signal.getsignal(signal.SIGTERM) in (_flush_then_terminate, _terminate_unless_flushing):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if _sigterm_watch is not None:
            previous = signal.set_wakeup_fd(-1)
            if previous != _sigterm_watch[1]:
                signal.set_wakeup_fd(previous)
    except (ValueError, OSError):
        pass
    for fd in _sigterm_watch or ():
        with contextlib.suppress(OSError):
            os.close(fd)
    _sigterm_watch = None


def _flush_then_terminate(signum: int, frame: FrameType | None) -> None:
    # The handler interrupts the main thread anywhere, possibly while it holds a worker
    # lock: flush from a helper thread and wait a bounded time, so the process still
    # dies promptly even then.
    global _handling
    if _handling:  # a SIGTERM nested in this very handler: the outer call carries on
        return
    # First of all: a second SIGTERM may run its handler inside this one, at its next
    # line (Python 3.13 does), before the flush below has begun.
    _handling = True
    try:
        signal.signal(signum, _terminate_unless_flushing)
        if _exiting():
            # It interrupted the exit flush itself: a pool worker that got its sentinel
            # is leaving already when terminate() signals it. Let that bounded flush
            # finish, and tell the watch so: it must not end the process in its middle.
            _sigterm_taken.set()
            return
        if not _sigterm_claim.acquire(blocking=False):
            # The watch flushes (the main thread came back late): it signals when done.
            if _sigterm_watch_done:
                _die_of(signum)
            return
        _sigterm_taken.set()
        try:
            _flush_bounded()
        finally:
            _die_of(signum)
    finally:
        _handling = False


def _terminate_unless_flushing(signum: int, frame: FrameType | None) -> None:
    # A SIGTERM after the first one. While a flush runs it changes nothing: the flush is
    # bounded anyway, and hosts signal twice in a row without meaning "hurry" (Hypercorn's
    # master terminate()s its other workers when the first one exits, then exits itself,
    # and multiprocessing terminate()s its daemon children once more on the way out: the
    # default action would cut that worker's flush short). SIGKILL still kills at once.
    if _handling or _flushing or _exiting():
        return
    _die_of(signum)


def _die_of(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _flush_bounded() -> None:
    global _flushing
    limit = _budget()  # before the flush starts: each client it finishes leaves the sum
    flusher = threading.Thread(target=_flush, name="klime-sigterm", daemon=True)
    _flushing = True
    try:
        flusher.start()
        flusher.join(limit)
    finally:
        _flushing = False
